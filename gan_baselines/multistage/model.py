"""Networks of the Multistage GAN (J. Liu, C. Wang, H. Su, B. Du, D. Tao, "Multistage GAN for
Fabric Defect Detection", IEEE TIP 2020) and the glue between its two stages.

- Texture condition: Gram matrices G = F Fᵀ / (C·H·W) (Gatys et al., CVPR 2016, eq. 3, as the
  paper's texture descriptor) of a defect-free patch's features from a frozen ImageNet network
  (`StyleEncoder`): by default the toolkit's pretrained EfficientNet-Lite0 at strides 4, 8 and 16
  (the paper uses VGG19; a local VGG19 weights file, or an explicitly chosen RANDOM VGG19, are
  options). Their upper-triangular entries, log-compressed, go through a small learned linear
  layer (`StyleProjection`) to a style vector.
- Stage 1, texture-conditioned defect GAN: `DefectPatchGenerator` G1(z, style) → a P×P defect
  patch; `PatchDiscriminator` D1(patch, style) is a projection discriminator.
- Stage 2, defect fusion: the patch is resized to the mask's bounding box and pasted into the
  mask of a clean window (`paste_patches`); `FusionUNet` T(pasted window, mask) makes it seamless;
  `WindowDiscriminator` D2(window, mask) judges whole windows.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from defectfill.backbones import STAGE_ENDS, Backbone
from defectfill.errors import ConfigError

VGG_RANDOM_SEED = 0  # style_backbone vgg19-random: torchvision's VGG19 init drawn from this seed
STYLE_ENCODER_NAME = "style_encoder.safetensors"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0 = "efficientnet-lite0"
STYLE_BACKBONES = (LITE0, "vgg19", "vgg19-random")  # pretrained Lite0 | VGG19 from a local file | RANDOM VGG19
DEFAULT_STYLE_BACKBONE = LITE0
LITE0_LAYERS = {"stride2": 0, "stride4": 1, "stride8": 2, "stride16": 3, "stride32": 4}  # -> Backbone level
DEFAULT_STYLE_LAYERS = {LITE0: ("stride4", "stride8", "stride16"), "vgg19": ("relu1_1", "relu2_1"),
                        "vgg19-random": ("relu1_1", "relu2_1")}


# ---- texture condition: Gram matrices of frozen ImageNet features ----

def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrix G = F Fᵀ / (C·H·W) per sample: (B, C, H, W) → (B, C, C).

    Gatys et al., CVPR 2016, eq. 3 (G_ij = Σ_k F_ik F_jk over the H·W positions), divided by C·H·W
    so its scale does not depend on the layer's size."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def upper_triangle(gram: torch.Tensor) -> torch.Tensor:
    """The C(C+1)/2 upper-triangular entries (diagonal included) of symmetric (B, C, C) matrices."""
    rows, cols = torch.triu_indices(gram.shape[-1], gram.shape[-1], device=gram.device)
    return gram[:, rows, cols]


@functools.lru_cache(maxsize=1)
def vgg19_layer_names() -> dict[str, tuple[int, int]]:
    """torchvision VGG19 `features` layer names → (index, channels): conv1_1, relu1_1, ..., relu5_4."""
    from torchvision.models.vgg import cfgs

    names, block, conv, index, channels = {}, 1, 0, 0, 3
    for item in cfgs["E"]:
        if item == "M":
            block, conv, index = block + 1, 0, index + 1
            continue
        conv, channels = conv + 1, int(item)
        names[f"conv{block}_{conv}"] = (index, channels)
        names[f"relu{block}_{conv}"] = (index + 1, channels)
        index += 2
    return names


def vgg19_skeleton(upto: int) -> nn.Sequential:
    """The first `upto` layers of torchvision's `vgg19(weights=None).features`, uninitialised
    (built on the meta device, so nothing is drawn or downloaded)."""
    from torchvision.models import vgg19

    with torch.device("meta"):
        full = vgg19(weights=None)
    return full.features[:upto].to_empty(device="cpu")


@functools.lru_cache(maxsize=4)
def _random_vgg19_state(upto: int) -> dict[str, torch.Tensor]:
    from torchvision.models import vgg19

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(VGG_RANDOM_SEED)
        features = vgg19(weights=None).features[:upto]
    return {k: v.detach().clone() for k, v in features.state_dict().items()}


def random_vgg19_state(upto: int) -> dict[str, torch.Tensor]:
    """State of `vgg19(weights=None).features[:upto]` drawn from VGG_RANDOM_SEED (global RNG untouched)."""
    return {k: v.clone() for k, v in _random_vgg19_state(upto).items()}


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or .pth (torch.load with weights_only=True); errors name the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: VGG19 weights file not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix in (".pth", ".pt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ConfigError(f"{path}: expected a state dict, got {type(state).__name__}")
            return state
    except ConfigError:
        raise
    except Exception as exc:  # safetensors / pickle raise many types
        raise ConfigError(f"{path}: cannot read VGG19 weights ({exc})".splitlines()[0]) from exc
    raise ConfigError(f"{path}: VGG19 weights must be .safetensors or .pth, got '{path.suffix}'")


def vgg19_state_from_file(path: str | os.PathLike, upto: int) -> dict[str, torch.Tensor]:
    """`features.N.*` tensors (N < upto) of a torchvision vgg19 state dict, re-keyed `N.*`."""
    path = Path(path)
    state, out = read_state_file(path), {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        index = rest.partition(".")[0]
        if head == "features" and index.isdigit() and int(index) < upto:
            out[rest] = value
    needed = set(vgg19_skeleton(upto).state_dict())
    missing = sorted(needed - set(out), key=lambda k: int(k.partition(".")[0]))
    if missing:
        raise ConfigError(f"{path}: no weights for VGG19 layer(s) {', '.join('features.' + k for k in missing)}")
    return out


def style_layer_names(backbone: str) -> list[str]:
    """The layer names `style_layers` may use with `backbone`: Lite0 strides or VGG19 ReLUs."""
    if backbone not in STYLE_BACKBONES:
        raise ConfigError(f"style_backbone must be one of {', '.join(STYLE_BACKBONES)}, got {backbone!r}")
    if backbone == LITE0:
        return list(LITE0_LAYERS)
    return [n for n in vgg19_layer_names() if n.startswith("relu")]


def check_style_layers(backbone: str, layers) -> tuple[str, ...]:
    """`layers` (None: the backbone's default) as a tuple of known, distinct layer names; else ConfigError."""
    names = style_layer_names(backbone)
    layers = tuple(DEFAULT_STYLE_LAYERS[backbone] if layers is None else layers)
    unknown = [n for n in layers if n not in names]
    if not layers or unknown or len(set(layers)) != len(layers):
        what = f"unknown {backbone} layer(s) {unknown}" if unknown else \
            ("(none given)" if not layers else f"repeated layer(s) in {list(layers)}")
        raise ConfigError(f"style_layers: {what}; choose from {', '.join(names)}")
    return layers


def lite0_needed_keys(state_keys, levels: tuple[int, ...]) -> list[str]:
    """Keys of a timm Lite0 state dict that the feature levels up to max(levels) use (stem, bn1, early blocks)."""
    last = STAGE_ENDS[max(levels)]
    return [k for k in state_keys if k.startswith(("conv_stem.", "bn1."))
            or k.startswith("blocks.") and int(k.split(".")[1]) <= last]


class StyleEncoder(nn.Module):
    """A frozen ImageNet network, truncated after the deepest chosen layer; `gram_vector(x)` is the
    texture condition: concatenated upper-triangular Gram entries of the chosen layers.

    `backbone` (MultistageConfig.style_backbone):
    - "efficientnet-lite0" (default): the toolkit's pretrained backbone
      (`defectfill.backbones.Backbone`), layers "stride2" ... "stride32" (default stride4, 8, 16);
    - "vgg19": torchvision VGG19 with ImageNet weights from the local file `vgg_weights`
      (.safetensors / .pth; required), layers "relu1_1" ... "relu5_4" (default relu1_1, relu2_1);
    - "vgg19-random": torchvision's random VGG19 init from VGG_RANDOM_SEED (explicit option only).
    Nothing is downloaded. `description` names the network and weights used.
    """

    def __init__(self, layers=None, vgg_weights: str | os.PathLike | None = None, *,
                 backbone: str = DEFAULT_STYLE_BACKBONE, state: dict[str, torch.Tensor] | None = None,
                 description: str | None = None):
        super().__init__()
        self.layers = check_style_layers(backbone, layers)
        self.backbone = backbone
        if vgg_weights is not None and backbone != "vgg19":
            raise ConfigError(f"vgg_weights ({vgg_weights}) is for style_backbone vgg19; style_backbone is "
                              f"{backbone!r}")
        if backbone == LITE0:
            self._init_lite0(state, description)
        else:
            self._init_vgg(vgg_weights, state, description)
        self.requires_grad_(False)
        self.eval()

    def _init_lite0(self, state: dict[str, torch.Tensor] | None, description: str | None) -> None:
        self.levels = sorted(LITE0_LAYERS[n] for n in self.layers)
        self.net = Backbone(pretrained=state is None, levels=tuple(self.levels), frozen=True)
        by_level = dict(zip(self.levels, self.net.channels))
        self.layer_channels = [by_level[LITE0_LAYERS[n]] for n in self.layers]
        if state is not None:
            needed = lite0_needed_keys(self.net.net.state_dict(), tuple(self.levels))
            missing = sorted(set(needed) - set(state))
            if missing or set(state) - set(needed):
                raise RuntimeError(f"EfficientNet-Lite0 state does not fit layers {list(self.layers)}: "
                                   f"missing {missing[:3]}, unexpected {sorted(set(state) - set(needed))[:3]}")
            self.net.net.load_state_dict(state, strict=False)
        self.description = description or f"{self.net.name}, Gram matrices at {', '.join(self.layers)}"

    def _init_vgg(self, vgg_weights, state: dict[str, torch.Tensor] | None, description: str | None) -> None:
        names = vgg19_layer_names()
        self.indices = [names[n][0] for n in self.layers]
        self.layer_channels = [names[n][1] for n in self.layers]
        upto = max(self.indices) + 1
        if state is None:
            if self.backbone == "vgg19-random":
                state = random_vgg19_state(upto)
                description = "vgg19 RANDOM init (explicit style_backbone: vgg19-random)"
            elif vgg_weights is None:
                raise ConfigError("style_backbone vgg19 needs vgg_weights (a local torchvision vgg19 ImageNet state "
                                  "dict); for torchvision's random init say style_backbone: vgg19-random")
            else:
                state, description = vgg19_state_from_file(vgg_weights, upto), f"vgg19 ImageNet from {vgg_weights}"
        self.features = vgg19_skeleton(upto)
        self.features.load_state_dict(state, strict=True)
        self.description = description or "vgg19 (unknown init)"
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> StyleEncoder:
        """Always in eval mode: the encoder is frozen."""
        return super().train(False)

    @property
    def gram_dim(self) -> int:
        return sum(c * (c + 1) // 2 for c in self.layer_channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of the chosen layers, in `layers` order, for images in [-1, 1] (1 or 3 channels)."""
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        if self.backbone == LITE0:
            feats = dict(zip(self.levels, self.net((x + 1) / 2)))  # the Backbone takes [0, 1]
            return [feats[LITE0_LAYERS[n]] for n in self.layers]
        x = ((x + 1) / 2 - self.mean) / self.std
        out, wanted = [], set(self.indices)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:  # ReLU outputs: the next layer (conv / pool) does not overwrite them
                out.append(x)
        return [out[sorted(wanted).index(i)] for i in self.indices]

    def gram_vector(self, images: torch.Tensor) -> torch.Tensor:
        """(B, gram_dim): the upper-triangular Gram entries of every chosen layer, concatenated."""
        return torch.cat([upper_triangle(gram_matrix(f.float())) for f in self(images)], dim=1)

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors the chosen layers use (truncated network), CPU and contiguous, for `save`."""
        if self.backbone == LITE0:
            state = self.net.net.state_dict()
            state = {k: state[k] for k in lite0_needed_keys(state, tuple(self.levels))}
        else:
            state = self.features.state_dict()
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def save(self, path: str | os.PathLike) -> None:
        """The truncated network as safetensors, with its backbone, layers and description as metadata."""
        save_file(self.weights(), str(path), metadata={"backbone": self.backbone, "layers": ",".join(self.layers),
                                                       "description": self.description})

    @classmethod
    def load(cls, path: str | os.PathLike) -> StyleEncoder:
        """A style encoder that `save` wrote (runs from before `backbone` metadata are VGG19); errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: style encoder weights missing; not a finished Multistage GAN run folder")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "layers" not in meta:
            raise ConfigError(f"{path}: not a Multistage GAN style encoder (no 'layers' metadata)")
        try:
            return cls(meta["layers"].split(","), backbone=meta.get("backbone", "vgg19"), state=load_file(str(path)),
                       description=meta.get("description"))
        except (RuntimeError, ConfigError) as exc:
            raise ConfigError(f"{path}: style encoder does not fit its layers ({exc})".splitlines()[0]) from exc


class StyleProjection(nn.Module):
    """Gram entries → style vector: sign(G)·log(1 + C·|G|) (the position-averaged Gram, log-compressed
    so features of any scale stay O(1); the sign keeps the negative entries of non-ReLU features such
    as EfficientNet-Lite0's, and for non-negative VGG ReLU Grams it is log(1 + C·G)), then a learned
    linear layer."""

    def __init__(self, layer_channels: list[int], out_dim: int):
        super().__init__()
        scale = torch.cat([torch.full((c * (c + 1) // 2,), float(c)) for c in layer_channels])
        self.register_buffer("scale", scale, persistent=False)
        self.linear = nn.Linear(len(scale), out_dim)

    def forward(self, gram: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.sign(gram) * torch.log1p(gram.abs() * self.scale))


# ---- building blocks ----

def norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation (identical in training and at batch size 1 at synthesis)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def down_block(c_in: int, c_out: int, normalise: bool = True) -> nn.Sequential:
    """Stride-2 4×4 conv (halves the size), [GroupNorm], LeakyReLU(0.2)."""
    layers = [nn.Conv2d(c_in, c_out, 4, 2, 1)] + ([norm(c_out)] if normalise else []) + [nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """Stride-2 4×4 transposed conv (doubles the size), GroupNorm, ReLU (DCGAN generator block)."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), norm(c_out), nn.ReLU())


class ConvCritic(nn.Module):
    """DCGAN-style discriminator body: stride-2 convs down to 4×4 (or an odd size), flattened."""

    def __init__(self, c_in: int, width: int, size: int):
        super().__init__()
        layers, c = [], width
        layers.append(down_block(c_in, c, normalise=False))
        size //= 2
        while size > 4 and size % 2 == 0:
            layers.append(down_block(c, min(2 * c, 8 * width), normalise=False))
            c, size = min(2 * c, 8 * width), size // 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = c * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


# ---- stage 1: texture-conditioned defect GAN ----

class DefectPatchGenerator(nn.Module):
    """G1(z, style): noise + the projected texture condition → a P×P defect patch in [-1, 1]."""

    def __init__(self, layer_channels: list[int], z_dim: int, style_dim: int, patch_size: int,
                 channels: int, width: int):
        super().__init__()
        n_up = int(math.log2(patch_size // 4))
        c0 = width * 2 ** (n_up - 1)
        self.style = StyleProjection(layer_channels, style_dim)
        self.c0 = c0
        self.fc = nn.Sequential(nn.Linear(z_dim + style_dim, c0 * 16), nn.ReLU())
        blocks = [up_block(c0 // 2 ** i, max(c0 // 2 ** (i + 1), width)) for i in range(n_up)]
        self.up = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.style(gram)], dim=1)).view(-1, self.c0, 4, 4)
        return self.out(self.up(h))


class PatchDiscriminator(nn.Module):
    """D1(patch, style): projection discriminator (Miyato & Koyama 2018) on conv features
    φ(x) = fc(body(x)): logit = ψ(φ(x)) + ⟨embed(style), φ(x)⟩."""

    def __init__(self, layer_channels: list[int], style_dim: int, patch_size: int, channels: int, width: int):
        super().__init__()
        self.body = ConvCritic(channels, width, patch_size)
        self.fc = nn.Sequential(nn.Linear(self.body.out_dim, style_dim), nn.LeakyReLU(0.2))
        self.style = StyleProjection(layer_channels, style_dim)
        self.out = nn.Linear(style_dim, 1)

    def forward(self, patch: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.body(patch))
        return self.out(h).squeeze(1) + (self.style(gram) * h).sum(dim=1)


# ---- stage 2: defect fusion ----

class FusionUNet(nn.Module):
    """T(pasted window, mask) → seamless window: a 3-level U-Net (pix2pix-style, GroupNorm)."""

    def __init__(self, channels: int, width: int, depth: int = 3):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.inc = nn.Sequential(nn.Conv2d(channels + 1, width, 3, 1, 1), norm(width), nn.LeakyReLU(0.2))
        self.downs = nn.ModuleList(down_block(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(up_block(widths[i + 1] * (1 if i == depth - 1 else 2), widths[i])
                                 for i in reversed(range(depth)))
        self.out = nn.Sequential(nn.Conv2d(2 * width, channels, 3, 1, 1), nn.Tanh())

    def forward(self, pasted: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(torch.cat([pasted, mask], dim=1))]
        for down in self.downs:
            skips.append(down(skips[-1]))
        h = skips.pop()
        for up in self.ups:
            h = torch.cat([up(h), skips.pop()], dim=1)
        return self.out(h)


class WindowDiscriminator(nn.Module):
    """D2(window, mask): judges whole windows (real defective crops vs fused ones), mask-conditioned."""

    def __init__(self, resolution: int, channels: int, width: int):
        super().__init__()
        self.body = ConvCritic(channels + 1, width, resolution)
        self.out = nn.Linear(self.body.out_dim, 1)

    def forward(self, window: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(torch.cat([window, mask], dim=1))).squeeze(1)


# ---- between the stages: defect patches cut and pasted at mask bounding boxes ----

def mask_bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), end-exclusive, of the nonzero pixels of a (1, H, W) or (H, W) mask."""
    ys, xs = torch.nonzero(mask.reshape(mask.shape[-2:]) > 0.5, as_tuple=True)
    if len(ys) == 0:
        raise ValueError("empty mask: no defect region to cut or paste a patch at")
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (antialiased) resize of (B, C, h, w) to `size`."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def crop_patches(images: torch.Tensor, masks: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Real defect patches: each image's mask bounding box, resized to P×P (stage 1's real samples)."""
    out = []
    for image, mask in zip(images, masks):
        y0, y1, x0, x1 = mask_bbox(mask)
        out.append(resize(image[None, :, y0:y1, x0:x1], (patch_size, patch_size)))
    return torch.cat(out)


def paste_patches(background: torch.Tensor, patches: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each patch resized to its mask's bounding box and pasted inside the mask:
    background·(1 − m) + placed patch·m (T's input)."""
    placed = torch.zeros_like(background)
    for i, mask in enumerate(masks):
        y0, y1, x0, x1 = mask_bbox(mask)
        placed[i, :, y0:y1, x0:x1] = resize(patches[i:i + 1], (y1 - y0, x1 - x0))[0]
    return background * (1 - masks) + placed * masks


def build_generators(cfg, layer_channels: list[int], channels: int) -> dict[str, nn.Module]:
    """G1 (stage 1 generator) and T (stage 2 fusion network) for a MultistageConfig."""
    return {"G1": DefectPatchGenerator(layer_channels, cfg.z_dim, cfg.style_dim, cfg.patch_size, channels,
                                       cfg.width_g),
            "T": FusionUNet(channels, cfg.width_g)}


def build_discriminators(cfg, layer_channels: list[int], channels: int) -> dict[str, nn.Module]:
    """D1 (patch, style) and D2 (window, mask) for a MultistageConfig."""
    return {"D1": PatchDiscriminator(layer_channels, cfg.style_dim, cfg.patch_size, channels, cfg.width_d),
            "D2": WindowDiscriminator(cfg.resolution, channels, cfg.width_d)}


def synthesize_windows(g1: nn.Module, t: nn.Module, encoder: StyleEncoder, background: torch.Tensor,
                       masks: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole pipeline on clean windows: their Gram style → G1(z, style) → paste into the
    mask → T fuses. Returns (patches, fused windows)."""
    patches = g1(z, encoder.gram_vector(background))
    return patches, t(paste_patches(background, patches, masks), masks)
