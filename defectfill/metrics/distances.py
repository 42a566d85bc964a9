"""Masked distances between candidates and a clean image: what Low-Fidelity Selection
(`defectfill.diffusion.selection`) and the benchmark's diversity and gallery measures use.

The DefectFill paper measures with LPIPS restricted to the mask. Measures:

* ``"lpips-lite0"`` (the default, :data:`DEFAULT_MEASURE`): the LPIPS-style distance of
  Zhang et al. 2018 eq. 1 with unit weights on the pretrained ImageNet EfficientNet-Lite0
  backbone (:class:`defectfill.metrics.perceptual.BackbonePerceptual`), inside the mask —
  pretrained and available offline.
* ``"lpips"`` (:data:`PAPER_MEASURE`): the lpips package's network (AlexNet by default). It is
  the paper's measure only with real ImageNet backbone weights from a local file
  (``load_lpips(backbone_weights=...)``); without them its backbone is RANDOM (an explicit
  option, and its description says so).
* ``"l1"``, ``"l2"`` and ``"ssim"``: cheap pixel measures for ablations and tests.

Every measure is a distance: larger means less like the clean image. Everything here is pure:
no global state, no downloads. The perceptual network is built once with
:func:`load_perceptual` (or :func:`load_lpips`) and passed in.

Tensor conventions: candidates ``(K, C, H, W)``, clean ``(C, H, W)`` or ``(1, C, H, W)``,
values in [0, 1], ``C`` 3 or 1 (grayscale is repeated to 3 channels); mask ``(H, W)``,
``(1, H, W)`` or ``(1, 1, H, W)``, bool or float (a pixel is in the mask when > 0.5).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from defectfill.metrics.perceptual import MEASURE_NAME as LITE0_MEASURE
from defectfill.metrics.perceptual import BackbonePerceptual

if TYPE_CHECKING:
    import lpips

MEASURES = (LITE0_MEASURE, "lpips", "l1", "l2", "ssim")
PERCEPTUAL_MEASURES = (LITE0_MEASURE, "lpips")  # need a network (load_perceptual)
DEFAULT_MEASURE = LITE0_MEASURE  # LPIPS-style on the pretrained EfficientNet-Lite0: never random by default
PAPER_MEASURE = "lpips"  # DefectFill Sec. 3.3: LPIPS inside the mask (with real AlexNet weights)
LPIPS_NETS = ("alex", "vgg", "squeeze")
_RANGE_TOL = 1e-3  # tolerated overshoot of [0, 1] (resampling, fp rounding)
_FALLBACK_SEED = 0  # the random LPIPS backbone is seeded so scores reproduce across runs


# ---------------------------------------------------------------------------- input checks


def _as_images(x: torch.Tensor, name: str, batched: bool) -> torch.Tensor:
    """Validate an image tensor and return float32 (N, 3, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not batched and x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        want = "(K, 3, H, W) or (K, 1, H, W)" if batched else "(3, H, W), (1, 3, H, W) or 1-channel"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not batched and x.shape[0] != 1:
        raise ValueError(f"{name} must hold one image, got a batch of {x.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (K = 0 candidates)")
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = float(x.min()), float(x.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(f"{name} must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _as_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Validate a mask of image size ``size`` and return float32 {0, 1} (1, 1, H, W)."""
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    m = mask
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
    if tuple(m.shape) != tuple(size):
        raise ValueError(f"mask size {tuple(m.shape)} does not match image size {tuple(size)}")
    m = (m.float() > 0.5).float() if m.dtype != torch.bool else m.float()
    if not m.any():
        raise ValueError("mask is empty: Low-Fidelity Selection needs at least one mask pixel")
    return m[None, None]


def _prepare(candidates, clean, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cand = _as_images(candidates, "candidates", batched=True)
    ref = _as_images(clean, "clean", batched=False)
    if cand.shape[-2:] != ref.shape[-2:]:
        raise ValueError(
            f"candidates size {tuple(cand.shape[-2:])} does not match clean size {tuple(ref.shape[-2:])}"
        )
    return cand, ref, _as_mask(mask, tuple(cand.shape[-2:]))


# ---------------------------------------------------------------------------- masked average


def masked_mean(distance_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average a per-pixel distance map (K, 1, h, w) over the mask (Sec. 3.3: "inside the mask").

    ``mask`` is (1, 1, H, W) in {0, 1}. If the map is smaller or larger than the mask,
    the mask is resampled to the map size by area averaging and used as weights, so a
    map cell counts in proportion to how much of it the mask covers.
    """
    if distance_map.ndim != 4 or distance_map.shape[1] != 1:
        raise ValueError(f"distance map must be (K, 1, h, w), got {tuple(distance_map.shape)}")
    weights = mask.to(distance_map)
    if weights.shape[-2:] != distance_map.shape[-2:]:
        weights = F.interpolate(weights, size=distance_map.shape[-2:], mode="area")
    total = weights.sum()
    if total <= 0:
        raise ValueError(f"mask covers no cell of the {tuple(distance_map.shape[-2:])} distance map")
    return (distance_map * weights).sum(dim=(1, 2, 3)) / total


# ---------------------------------------------------------------------------- distance maps


def l1_map(candidates: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean absolute difference over channels, (K, 1, H, W)."""
    return (candidates - clean).abs().mean(dim=1, keepdim=True)


def l2_map(candidates: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-pixel mean squared difference over channels, (K, 1, H, W)."""
    return (candidates - clean).square().mean(dim=1, keepdim=True)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    candidates: torch.Tensor, clean: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004; gaussian 11x11 window, sigma 1.5, data range 1), (K, 1, H, W).

    Computed per channel and averaged over channels; borders are reflection-padded so the
    map has the image size. Each value depends on the ``window`` neighbourhood of its pixel.
    """
    k, c, h, w = candidates.shape
    pad = window // 2
    if min(h, w) <= pad:
        raise ValueError(f"SSIM needs images larger than {pad} px per side, got {h}x{w}")
    g = _gaussian_1d(window, sigma).to(candidates)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    clean = clean.expand(k, -1, -1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:  # gaussian-weighted local mean, same size
        return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), kernel, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(candidates), blur(clean)
    var_x = blur(candidates * candidates) - mu_x**2
    var_y = blur(clean * clean) - mu_y**2
    cov = blur(candidates * clean) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=1, keepdim=True)


def _crop_to_mask(
    cand: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor, margin: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop all three to the mask's bounding box grown by ``margin`` px (clamped to the image).

    A windowed measure of radius ``margin`` gives the same values at mask pixels on the
    crop as on the full image, for a fraction of the cost when the mask is small.
    """
    rows = torch.nonzero(mask[0, 0].any(dim=1)).flatten()
    cols = torch.nonzero(mask[0, 0].any(dim=0)).flatten()
    h, w = mask.shape[-2:]
    y0, y1 = max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, h)
    x0, x1 = max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, w)
    return cand[..., y0:y1, x0:x1], ref[..., y0:y1, x0:x1], mask[..., y0:y1, x0:x1]


# ---------------------------------------------------------------------------- measures


@torch.no_grad()
def masked_lpips_distance(
    candidates: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    model: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """LPIPS(-style) distance of each candidate to the clean image, inside the mask: (K,) (Sec. 3.3).

    DefectFill Sec. 3.3 (Low-Fidelity Selection) scores candidates by LPIPS restricted to
    the mask. ``model`` must give a per-pixel map: ``lpips.LPIPS(..., spatial=True)`` from
    :func:`load_lpips`, or the LPIPS-style :class:`~defectfill.metrics.perceptual.BackbonePerceptual`
    from :func:`load_perceptual` (which computes the clean image's features once); the map
    (K, 1, h, w) is averaged over the mask pixels (the mask is resampled to the map size if
    they differ). Inputs in [0, 1].
    """
    if model is None:
        raise ValueError("masked_lpips_distance needs a perceptual model; build one with load_perceptual() "
                         "or load_lpips()")
    if getattr(model, "spatial", True) is False:
        raise ValueError("the LPIPS model must be built with spatial=True (a per-pixel map is needed)")
    cand, ref, m = _prepare(candidates, clean, mask)
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else cand.device
    cand, ref = cand.to(device), ref.to(device)
    if not isinstance(model, BackbonePerceptual):  # it broadcasts a single clean image itself
        ref = ref.expand(cand.shape[0], -1, -1, -1)
    dmap = model(cand, ref, normalize=True)
    if dmap.ndim != 4 or dmap.shape[0] != cand.shape[0] or dmap.shape[1] != 1:
        raise ValueError(f"LPIPS model returned shape {tuple(dmap.shape)}, expected (K, 1, h, w)")
    return masked_mean(dmap.float(), m.to(device)).cpu()


@torch.no_grad()
def masked_distance(
    candidates: torch.Tensor,
    clean: torch.Tensor,
    mask: torch.Tensor,
    measure: str = DEFAULT_MEASURE,
    lpips_model: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Distance of each of K candidates to the clean image inside the mask, (K,) (Sec. 3.3).

    ``measure``: ``"lpips-lite0"`` (default; ``lpips_model`` a
    :class:`~defectfill.metrics.perceptual.BackbonePerceptual`), ``"lpips"`` (the paper's LPIPS;
    ``lpips_model`` a spatial lpips network), ``"l1"`` (mean absolute difference), ``"l2"``
    (mean squared difference) or ``"ssim"`` (1 - SSIM); each per-pixel map is averaged over the
    mask pixels. :func:`load_perceptual` builds the right ``lpips_model`` for a measure.
    Larger = less like the clean image.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    if measure in PERCEPTUAL_MEASURES:
        if lpips_model is None:
            raise ValueError(f"measure={measure!r} needs lpips_model (build it with "
                             f"defectfill.metrics.distances.load_perceptual({measure!r}))")
        if (measure == LITE0_MEASURE) != isinstance(lpips_model, BackbonePerceptual):
            raise ValueError(f"measure={measure!r} got a {type(lpips_model).__name__} model; build it with "
                             f"defectfill.metrics.distances.load_perceptual({measure!r})")
        return masked_lpips_distance(candidates, clean, mask, lpips_model)
    cand, ref, m = _prepare(candidates, clean, mask)
    if measure == "l1":
        dmap = l1_map(cand, ref)
    elif measure == "l2":
        dmap = l2_map(cand, ref)
    else:  # SSIM only where it matters: the mask's box plus the window radius (same values)
        window = 11
        cand, ref, m = _crop_to_mask(cand, ref, m, margin=window // 2)
        dmap = 1.0 - ssim_map(cand, ref, window=window)
    return masked_mean(dmap, m)


# ---------------------------------------------------------------------------- LPIPS loading


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: backbone weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix in (".pth", ".pt"):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path}: expected a state dict of tensors (torchvision model.state_dict())")
        return state
    raise ValueError(f"{path}: backbone weights must be .safetensors or .pth, got '{path.suffix}'")


def load_backbone_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy a torchvision backbone state dict (``features.N.*`` keys) into an LPIPS network.

    lpips builds its slices (``net.sliceK``) from the modules of torchvision's ``features``
    and names each by its ``features`` index, so ``features.N.rest`` goes to the child
    named ``N`` in whichever slice holds it. ``classifier.*`` keys are ignored; every
    backbone layer must be covered (strict per-layer loading).
    """
    path = Path(path)
    state = _read_state_dict(path)
    layers = {
        int(name): child
        for slice_name, part in model.net.named_children()
        if slice_name.startswith("slice")
        for name, child in part.named_children()
    }
    per_layer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        head, _, rest = key.partition(".")
        index, _, rest = rest.partition(".")
        if head != "features" or not index.isdigit() or not rest:
            raise ValueError(f"{path}: unexpected key '{key}' (want torchvision 'features.N.*' keys)")
        if int(index) not in layers:
            raise ValueError(f"{path}: key '{key}' names no layer of the lpips-{model.pnet_type} backbone")
        per_layer.setdefault(int(index), {})[rest] = value
    needed = [i for i, layer in layers.items() if any(True for _ in layer.parameters())]
    missing = [i for i in needed if i not in per_layer]
    if missing:
        raise ValueError(f"{path}: no weights for backbone layer(s) features.{missing} of lpips-{model.pnet_type}")
    for index, sub in per_layer.items():
        try:
            layers[index].load_state_dict(sub, strict=True)
        except RuntimeError as err:
            msg = " ".join(str(err).split())
            raise ValueError(f"{path}: features.{index} does not fit lpips-{model.pnet_type}: {msg}") from err


def load_lpips(
    net: str = "alex",
    backbone_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[lpips.LPIPS, str]:
    """Build the spatial LPIPS network for Low-Fidelity Selection (Sec. 3.3), offline.

    Returns ``(lpips.LPIPS, description)``. The LPIPS linear calibration layers ship
    inside the lpips package; ``pnet_rand=True`` stops torchvision from downloading its
    ImageNet backbone, so nothing touches the network. Pass ``backbone_weights`` (a local
    torchvision ``alexnet`` / ``vgg16`` / ``squeezenet1_1`` state dict, ``.safetensors``
    or ``.pth``) to get the standard LPIPS (the paper default). Without it the backbone
    is random (seeded, so reproducible) and the description says so: still a distance
    that is 0 for identical images, but not the standard perceptual metric.
    The model is in eval mode with gradients off.
    """
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {', '.join(LPIPS_NETS)}")
    import lpips

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(_FALLBACK_SEED)
        warnings.filterwarnings("ignore", message=r".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=net, spatial=True, pretrained=True, pnet_rand=True, verbose=False)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
        description = f"lpips-{net} (ImageNet backbone from {backbone_weights})"
    else:
        description = f"lpips-{net} with a RANDOM backbone (offline fallback; not the standard LPIPS)"
    model = model.to(device).eval().requires_grad_(False)
    return model, description


def load_perceptual(
    measure: str = DEFAULT_MEASURE,
    lpips_net: str = "alex",
    lpips_weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module | None, str | None]:
    """The network a Low-Fidelity Selection ``measure`` needs, and its description, built once.

    * ``"lpips-lite0"`` (default): :class:`~defectfill.metrics.perceptual.BackbonePerceptual` on
      the pretrained EfficientNet-Lite0 (ModelError naming the package when it is missing).
      ``lpips_net`` does not apply; ``lpips_weights`` (AlexNet/VGG/SqueezeNet weights) is refused,
      since they would silently go unused: use ``measure="lpips"`` for them.
    * ``"lpips"``: :func:`load_lpips` ``(lpips_net, lpips_weights)`` — the paper's LPIPS with
      local ImageNet weights, else an explicitly chosen RANDOM backbone.
    * ``"l1"``, ``"l2"``, ``"ssim"``: ``(None, None)`` (no network).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    if measure == "lpips":
        return load_lpips(lpips_net, lpips_weights, device=device)
    if lpips_weights is not None:
        raise ValueError(f"lpips_weights ({lpips_weights}) are torchvision {lpips_net} weights for the 'lpips' "
                         f"measure; {measure!r} does not use them: choose 'lpips' or drop lpips_weights")
    if measure != LITE0_MEASURE:
        return None, None
    model = BackbonePerceptual(pretrained=True).to(device)
    return model, model.description
