"""Pluggable image feature extractors for the generation metrics (offline: nothing is ever downloaded).

FID (Heusel et al., NeurIPS 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to
a Local Nash Equilibrium") and KID (Binkowski et al., ICLR 2018, "Demystifying MMD GANs")
compare two sets of images through the 2048-d pool3 features of the TensorFlow Inception-v3
network (``pt_inception-2015-12-05``). Only that network with those weights gives numbers
comparable with published FID/KID, and only its numbers are *called* FID/KID; on any other
features the same formulas are a "Fréchet distance (<network> features)" and a "KID (<network>
features)" (:func:`metric_names`). Every extractor says which one it is through its ``standard``
flag, its ``name`` and its short ``label``:

* :class:`BackboneFeatures` — the DEFAULT (``kind="efficientnet-lite0"``): 1280-d pooled head
  features of the toolkit's one pretrained backbone, ImageNet EfficientNet-Lite0
  (:mod:`defectfill.backbones`, a registry package: available offline). ``standard=False``.
* :class:`FIDInceptionFeatures` — torch-fidelity's port of the TF-FID network, from a local
  weights file (needs the optional ``torch-fidelity`` package). ``standard`` is True only when
  the file's SHA-256 matches the published FID weights.
* :class:`InceptionFeatures` — torchvision Inception-v3 with a local ImageNet state dict: close
  to, but not, the TF-FID network (different weights and pooling details). ``standard=False``.
* :class:`RandomConvFeatures` — a seeded RANDOM conv net, only when asked for (``kind="random"``):
  good for relative comparisons in tests, NOT FID/KID. ``standard=False``.

Every extractor is a ``torch.nn.Module`` usable directly as the ``feature`` argument of
``torchmetrics`` ``FrechetInceptionDistance`` / ``KernelInceptionDistance``: it has an int
``num_features``, takes uint8 ``(N, 3, H, W)`` images (``normalize=False``) and returns
``(N, num_features)`` float features. It always stays in eval mode, gradients off.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F

from defectfill.backbones import NUM_FEATURES, Backbone
from defectfill.errors import ModelError

KINDS = ("efficientnet-lite0", "fid-inception", "inception", "random")
DEFAULT_KIND = "efficientnet-lite0"  # the pretrained backbone: never a random network unless asked
INCEPTION_SIZE = 299  # Inception-v3 input side
LITE0_SIZE = 224  # EfficientNet-Lite0's ImageNet training side
FID_WEIGHTS_SHA256_PREFIX = "6726825d"  # pt_inception-2015-12-05-6726825d.pth (torch.hub name = sha256 prefix)
_TF_FID_CLASSES = 1008  # the TF-FID Inception has a 1008-way fc; torchvision's ImageNet one has 1000


# ---------------------------------------------------------------------------- base class


def check_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a uint8 ``(N, 3, H, W)`` batch (the torchmetrics ``normalize=False`` convention)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


class FeatureExtractor(torch.nn.Module):
    """Interface: uint8 ``(N, 3, H, W)`` images -> ``(N, num_features)`` float features.

    Attributes: ``name`` (says which network and weights), ``label`` (the short network name
    used in metric names, e.g. "EfficientNet-Lite0"), ``num_features`` (D), ``standard`` (True
    only for the standard FID/KID network with its standard weights) and ``input_size`` (the
    side images are resized to inside ``forward``; ``None`` = any size).
    Subclasses implement :meth:`features`; the module never leaves eval mode.
    """

    name: str = "abstract feature extractor"
    label: str = ""
    num_features: int = 0
    standard: bool = False
    input_size: int | None = None

    def __init__(self):
        super().__init__()
        self.training = False  # eval from the start; children are put in eval mode when built

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Stay in eval mode (batch-norm statistics and dropout must not change features)."""
        return super().train(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a validated uint8 batch on the module's device; implemented by subclasses."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, num_features)`` features of uint8 ``(N, 3, H, W)`` images."""
        images = check_uint8_images(images)
        param = next(self.parameters(), None)
        if param is not None:
            images = images.to(param.device)
        out = self.features(images)
        if out.ndim != 2 or out.shape != (images.shape[0], self.num_features):
            raise RuntimeError(f"{self.name}: returned {tuple(out.shape)}, expected ({images.shape[0]}, "
                               f"{self.num_features})")
        return out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_features={self.num_features}, standard={self.standard}"


# ---------------------------------------------------------------------------- weights files


def _weights_file(path: str | Path | None, kind: str) -> Path:
    """The weights file of ``kind`` as a Path; ModelError naming it when missing or of a wrong type."""
    if path is None:
        raise ModelError(f"feature extractor {kind!r} needs a local weights file (.safetensors or .pth); "
                         "nothing is downloaded")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"{path}: {kind} weights file not found")
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise ModelError(f"{path}: {kind} weights must be .safetensors or .pth, got '{path.suffix}'")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a local ``.safetensors`` or ``.pth`` file (``weights_only=True``)."""
    path = _weights_file(path, "model")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt / pickled objects / wrong format
        raise ModelError(f"{path}: cannot read weights ({' '.join(str(err).split())[:200]})") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: expected a state dict of tensors (model.state_dict())")
    return state


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (to recognise the published FID weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- torchvision Inception-v3


class InceptionFeatures(FeatureExtractor):
    """torchvision Inception-v3 pool3 features (2048-d) from a LOCAL ImageNet state dict.

    Szegedy et al., CVPR 2016 ("Rethinking the Inception Architecture"), torchvision's
    ``inception_v3(weights=None, aux_logits=True, init_weights=False)`` with the state dict in
    ``weights_path`` (``.safetensors`` or ``.pth``; the ``fc.*`` classifier is not needed and is
    ignored). Images are resized bilinearly (antialiased) to 299x299 and scaled to [-1, 1] —
    what torchvision's ``transform_input=True`` does to ImageNet-normalised input, which its
    ImageNet weights expect. Close to, but NOT, the TF-FID network: ``standard=False``.
    """

    input_size = INCEPTION_SIZE
    num_features = 2048
    standard = False

    def __init__(self, weights_path: str | Path):
        super().__init__()
        import torchvision

        path = _weights_file(weights_path, "inception")
        state = read_state_dict(path)
        fc = state.get("fc.weight")
        if fc is not None and fc.ndim == 2 and fc.shape[0] == _TF_FID_CLASSES:
            raise ModelError(f"{path}: looks like the TF-FID Inception weights (1008-way fc); they belong to "
                             "another network: use kind='fid-inception' (needs torch-fidelity)")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        aux = any(k.startswith("AuxLogits.") for k in state)
        net = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False)
        net.fc = torch.nn.Identity()  # pool3 (2048-d, after global average pooling)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as err:
            lines = [line.strip() for line in str(err).splitlines()[1:3]]
            raise ModelError(f"{path}: not a torchvision inception_v3 state dict ({'; '.join(lines)[:300]})") from err
        self.net = net.eval().requires_grad_(False)
        self.weights_path = str(path)
        self.name = "torchvision Inception-v3 (ImageNet, local weights) — close to but not the TF-FID network"
        self.label = "torchvision Inception-v3"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.net(x * 2.0 - 1.0)


# ---------------------------------------------------------------------------- torch-fidelity TF-FID Inception


class FIDInceptionFeatures(FeatureExtractor):
    """The standard FID/KID network: torch-fidelity's TF-FID Inception-v3, pool3 2048-d, LOCAL weights.

    Heusel et al. 2017 (FID) / Binkowski et al. 2018 (KID) use the TF Inception graph
    ``2015-12-05``; torch-fidelity ports it (``FeatureExtractorInceptionV3``, wrapped by
    torchmetrics as ``NoTrainInceptionV3``) and loads ``weights_path`` with ``torch.load``, so
    nothing is downloaded. Needs the optional ``torch-fidelity`` package. ``standard`` is True
    only when the file's SHA-256 starts with ``6726825d`` (``pt_inception-2015-12-05-6726825d.pth``).
    """

    input_size = INCEPTION_SIZE
    num_features = 2048

    def __init__(self, weights_path: str | Path):
        super().__init__()
        path = _weights_file(weights_path, "fid-inception")
        try:
            import torch_fidelity  # noqa: F401
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as err:
            raise ModelError("feature extractor 'fid-inception' needs the torch-fidelity package "
                             "(pip install torch-fidelity); it is not installed") from err
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=str(path))
        except Exception as err:
            raise ModelError(f"{path}: not the torch-fidelity FID Inception weights "
                             f"({' '.join(str(err).split())[:200]})") from err
        self.net.requires_grad_(False)
        self.standard = file_sha256(path).startswith(FID_WEIGHTS_SHA256_PREFIX)
        self.weights_path = str(path)
        verdict = "standard FID weights" if self.standard else "UNRECOGNISED weights: not the standard FID network"
        self.name = f"torch-fidelity TF-FID Inception-v3 pool3 ({path.name}; {verdict})"
        self.label = "TF-FID Inception-v3" if self.standard else "TF-FID Inception-v3 with unrecognised weights"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).reshape(images.shape[0], -1)


# ---------------------------------------------------------------------------- pretrained backbone (default)


class BackboneFeatures(FeatureExtractor):
    """Pooled 1280-d head features of ImageNet EfficientNet-Lite0 (:class:`defectfill.backbones.Backbone`).

    The default extractor of the generation metrics: the toolkit's one pretrained backbone
    (Tan & Le, ICML 2019, EfficientNet; the Lite variant, ReLU6 and no squeeze-excitation), its
    global-average-pooled ``conv_head`` output, i.e. the input of its ImageNet classifier — the
    same role pool3 plays in Inception-v3 for FID. Images are resized bilinearly (antialiased)
    to 224x224, its training side, and scaled to [0, 1] (the backbone normalises them).
    Not the FID network: ``standard=False``; metric names say "EfficientNet-Lite0 features".
    ``pretrained=False`` gives the seeded RANDOM backbone (an explicit option; the name says so).
    """

    input_size = LITE0_SIZE
    standard = False

    def __init__(self, pretrained: bool = True, seed: int = 0, weights: str | Path | None = None):
        super().__init__()
        self.backbone = Backbone(pretrained=pretrained, frozen=True, seed=seed, weights=weights)
        self.num_features = NUM_FEATURES
        self.pretrained = bool(pretrained)
        self.name = f"{self.backbone.name}, pooled {NUM_FEATURES}-d head features (not the FID Inception network)"
        self.label = "EfficientNet-Lite0" if pretrained else f"seed-{seed} RANDOM EfficientNet-Lite0"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if x.shape[-2:] != (LITE0_SIZE, LITE0_SIZE):
            x = F.interpolate(x, size=(LITE0_SIZE, LITE0_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return self.backbone.pooled(x)


# ---------------------------------------------------------------------------- random conv features (explicit)


class RandomConvFeatures(FeatureExtractor):
    """Seeded RANDOM conv features (explicit option; NOT FID/KID): 4 conv layers + global average pool.

    Random conv nets are a known weak-but-nonzero perceptual prior (cf. "random features" baselines
    in Naeem et al., ICML 2020, "Reliable Fidelity and Diversity Metrics"); scores are comparable
    only between runs with the same ``seed`` and ``dim``. Weights are drawn with a private
    ``torch.Generator(seed)`` (He-normal scale), so they do not depend on the global RNG.
    Images are scaled to [-1, 1]; any size >= 16 px works (no resizing).
    """

    standard = False
    _WIDTHS = (32, 64, 128)

    def __init__(self, seed: int = 0, dim: int = 256):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        gen = torch.Generator().manual_seed(int(seed))
        widths = (3, *self._WIDTHS, int(dim))
        layers: list[torch.nn.Module] = []
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
            conv = torch.nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            layers.append(conv)
            if i < len(widths) - 2:
                layers.append(torch.nn.ReLU())
        self.net = torch.nn.Sequential(*layers).eval().requires_grad_(False)
        self.seed, self.num_features = int(seed), int(dim)
        self.name = f"RANDOM conv features (seed={self.seed}, {self.num_features}-d; explicit option; NOT FID/KID)"
        self.label = f"seed-{self.seed} RANDOM conv"

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        return self.net(x).mean(dim=(2, 3))


# ---------------------------------------------------------------------------- names and factory


def metric_names(extractor: FeatureExtractor) -> dict[str, str]:
    """What the Fréchet distance and KID on ``extractor``'s features are called in results and reports.

    ``{"frechet": "FID", "kid": "KID"}`` only for the standard network (``extractor.standard``);
    otherwise ``"Fréchet distance (<label> features)"`` and ``"KID (<label> features)"``, so a
    distance on other features is never passed off as FID.
    """
    if extractor.standard:
        return {"frechet": "FID", "kid": "KID"}
    label = extractor.label or extractor.name
    return {"frechet": f"Fréchet distance ({label} features)", "kid": f"KID ({label} features)"}


def load_features(kind: str = DEFAULT_KIND, weights: str | Path | None = None, device: str | torch.device = "cpu",
                  seed: int = 0, dim: int = 256) -> FeatureExtractor:
    """Build a feature extractor by kind (default ``"efficientnet-lite0"``, the pretrained backbone).

    ``"efficientnet-lite0"``: :class:`BackboneFeatures`, packaged ImageNet weights (``weights``
    may name another local Lite0 state dict in the same layout). ``"fid-inception"`` and
    ``"inception"`` need ``weights`` (a local file; ModelError naming it when missing or
    unusable). ``"random"`` (explicit only) takes no weights (``seed`` and ``dim`` apply).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown feature extractor {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "efficientnet-lite0":
        extractor: FeatureExtractor = BackboneFeatures(pretrained=True, weights=weights)
    elif kind == "random":
        if weights is not None:
            raise ValueError(f"feature extractor 'random' takes no weights (got {weights})")
        extractor = RandomConvFeatures(seed=seed, dim=dim)
    elif kind == "inception":
        extractor = InceptionFeatures(weights)
    else:
        extractor = FIDInceptionFeatures(weights)
    return extractor.to(device).eval()
