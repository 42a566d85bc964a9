"""Distribution metrics between real and generated defect images: Fréchet distance and KID (torchmetrics).

* Fréchet distance — the FID formula of Heusel et al., NeurIPS 2017: ``|mu_r - mu_f|^2 +
  Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` of Gaussians fitted to the two feature sets.
* KID — Binkowski et al., ICLR 2018: unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.

Both come from ``torchmetrics`` (``FrechetInceptionDistance`` / ``KernelInceptionDistance``)
fed with features of a :class:`~defectfill.metrics.features.FeatureExtractor` — by default the
pretrained EfficientNet-Lite0 backbone's pooled features. Results are keyed ``frechet_distance``
/ ``kid_mean`` and carry their names (``frechet_name`` / ``kid_name``, from
:func:`~defectfill.metrics.features.metric_names`): "FID"/"KID" only when ``extractor.standard``
(the TF-FID Inception), else e.g. "Fréchet distance (EfficientNet-Lite0 features)". Both are
biased or noisy for small sets (the Fréchet distance strongly so: compare only at equal set
sizes; prefer KID for a few hundred images).

Line scans are 4096x256 with a small defect, so metrics are computed on defect-centred crops
(:func:`crop_around_masks`), not on mostly-clean full images.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from defectfill.data.datasets import load_reference_dataset
from defectfill.errors import DataError
from defectfill.formats.images import read_image, read_mask
from defectfill.metrics.features import FeatureExtractor, metric_names

DEFAULT_SIZE = 128  # common side for extractors without a fixed input size
DEFAULT_KID_SUBSETS = 100
MAX_KID_SUBSET = 1000  # torchmetrics / Binkowski et al. default subset size


# ---------------------------------------------------------------------------- image batches


def to_uint8_batch(images: Sequence[np.ndarray] | np.ndarray, size: int | None = None) -> torch.Tensor:
    """uint8 images (H, W) grey or (H, W, 3) RGB -> uint8 tensor (N, 3, size, size).

    Grey is repeated to 3 channels; images not already ``size`` x ``size`` are resized
    bicubically (PIL). With ``size=None`` all images must share one size and none is resized.
    """
    out = []
    for i, image in enumerate(images):
        a = np.asarray(image)
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"image {i}: expected uint8 (H, W) or (H, W, 3), got {a.dtype} {a.shape}")
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        if size is not None and a.shape[:2] != (size, size):
            a = np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC), dtype=np.uint8)
        if out and a.shape != out[0].shape:
            raise ValueError(f"image {i}: size {a.shape[:2]} differs from image 0 {out[0].shape[:2]} "
                             "(pass size= to resize)")
        out.append(a)
    if not out:
        raise ValueError("no images given")
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def extract_features(images: torch.Tensor, extractor: FeatureExtractor, batch_size: int = 32) -> torch.Tensor:
    """``(N, D)`` float64 CPU features of a uint8 (N, 3, H, W) batch, computed in chunks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [extractor(images[i:i + batch_size]).double().cpu() for i in range(0, images.shape[0], batch_size)]
    feats = torch.cat(chunks)
    if not torch.isfinite(feats).all():
        raise RuntimeError(f"{extractor.name}: non-finite features")
    return feats


class _PassThrough(torch.nn.Module):
    """A torchmetrics ``feature`` module whose "images" are already features (extractor run once)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


# ---------------------------------------------------------------------------- Fréchet distance / KID


def _check_set_sizes(n_real: int, n_fake: int) -> None:
    if min(n_real, n_fake) < 2:
        raise ValueError(f"Fréchet distance / KID need at least 2 real and 2 fake images, got {n_real} real and "
                         f"{n_fake} fake")


def image_features(images: Sequence[np.ndarray] | np.ndarray, extractor: FeatureExtractor, size: int | None = None,
                   batch_size: int = 32) -> torch.Tensor:
    """``(N, D)`` float64 features of uint8 images as :func:`frechet_kid` sees them: grey repeated to RGB,
    resized to ``size`` (default: the extractor's ``input_size``, else 128)."""
    size = size if size is not None else extractor.input_size or DEFAULT_SIZE
    return extract_features(to_uint8_batch(images, size), extractor, batch_size)


def frechet_kid_from_features(f_real: torch.Tensor, f_fake: torch.Tensor, kid_subset_size: int | None = None,
                              kid_subsets: int = DEFAULT_KID_SUBSETS, seed: int = 0) -> dict:
    """Fréchet distance (Heusel et al. 2017) and KID (Binkowski et al. 2018) of two ``(N, D)`` feature sets,
    via torchmetrics. KID uses ``kid_subsets`` random subsets of ``kid_subset_size`` (default
    ``min(n_real, n_fake, 1000)``) per set, drawn with ``seed`` (the global RNG is left untouched).
    Returns ``{frechet_distance, kid_mean, kid_std, kid_subset_size, kid_subsets, n_real, n_fake}``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    f_real, f_fake = torch.as_tensor(f_real, dtype=torch.float64), torch.as_tensor(f_fake, dtype=torch.float64)
    n_real, n_fake = f_real.shape[0], f_fake.shape[0]
    _check_set_sizes(n_real, n_fake)
    if f_real.shape[1] != f_fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {f_real.shape[1]}, fake {f_fake.shape[1]}")
    if kid_subset_size is None:
        kid_subset_size = min(n_real, n_fake, MAX_KID_SUBSET)
    if not 2 <= kid_subset_size <= min(n_real, n_fake):
        raise ValueError(f"kid_subset_size must be in [2, {min(n_real, n_fake)}] (the smaller set), "
                         f"got {kid_subset_size}")
    fid = FrechetInceptionDistance(feature=_PassThrough(f_real.shape[1]), normalize=False)
    fid.update(f_real, real=True)
    fid.update(f_fake, real=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_PassThrough(f_real.shape[1]), subsets=int(kid_subsets),
                                      subset_size=int(kid_subset_size), normalize=False)
    kid.update(f_real, real=True)
    kid.update(f_fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"frechet_distance": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": int(kid_subset_size), "kid_subsets": int(kid_subsets),
            "n_real": int(n_real), "n_fake": int(n_fake)}


def frechet_kid(
    real_images: Sequence[np.ndarray] | np.ndarray,
    fake_images: Sequence[np.ndarray] | np.ndarray,
    extractor: FeatureExtractor,
    kid_subset_size: int | None = None,
    kid_subsets: int = DEFAULT_KID_SUBSETS,
    size: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Fréchet distance and KID of fake vs real images (:func:`frechet_kid_from_features` on
    :func:`image_features`).

    Images are uint8 (H, W) or (H, W, 3) arrays, resized to ``size`` (default: the extractor's
    ``input_size``, else 128). Features are extracted once per image, in float64. Returns
    ``{frechet_distance, kid_mean, kid_std, kid_subset_size, kid_subsets, n_real, n_fake, size, extractor,
    standard, frechet_name, kid_name}``; ``standard`` is the extractor's flag (False: not comparable with
    published FID/KID) and the names say so (:func:`~defectfill.metrics.features.metric_names`).
    """
    if size is None:
        size = extractor.input_size or DEFAULT_SIZE
    n_real, n_fake = len(real_images), len(fake_images)
    _check_set_sizes(n_real, n_fake)
    out = frechet_kid_from_features(image_features(real_images, extractor, size, batch_size),
                                    image_features(fake_images, extractor, size, batch_size),
                                    kid_subset_size, kid_subsets, seed)
    names = metric_names(extractor)
    return {**out, "size": int(size), "extractor": extractor.name, "standard": bool(extractor.standard),
            "frechet_name": names["frechet"], "kid_name": names["kid"]}


# ---------------------------------------------------------------------------- defect-centred crops


def crop_window_around_mask(mask: np.ndarray, size: int) -> tuple[int, int, int]:
    """``(y0, x0, side)`` of the square window centred on the mask's bounding box.

    ``side = max(size, longest bounding-box side)`` so the whole defect fits. The window is
    clamped inside the image along each axis at least ``side`` long; along a shorter axis
    it starts before 0 / ends past the edge, evenly (the caller pads).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {mask.shape}")
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: no defect to centre the crop on")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    side = max(int(size), y1 - y0, x1 - x0)

    def start(lo: int, hi: int, length: int) -> int:
        s = (lo + hi - side) // 2
        return min(max(s, 0), length - side) if length >= side else -((side - length) // 2)

    h, w = mask.shape
    return start(y0, y1, h), start(x0, x1, w), side


def crop_around_masks(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Defect-centred ``size`` x ``size`` crop of ``image`` and ``mask`` (uint8 image, bool mask).

    The window (:func:`crop_window_around_mask`) is centred on the bounding box of all mask
    pixels, ``size`` wide, or as wide as the defect's longest side when larger (then resized
    down to ``size``: image bicubic, mask by area keeping any covered pixel). Along an image
    side shorter than the window (e.g. a large defect in a 256-px-high line scan) the image is
    reflection-padded. For a 4096x256 line scan and ``size=256`` this is the 256x256 window
    around the defect.
    """
    image, mask = np.asarray(image), np.asarray(mask).astype(bool)
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image size {image.shape[:2]} and mask size {mask.shape} differ")
    y0, x0, side = crop_window_around_mask(mask, size)
    h, w = mask.shape
    pad_y, pad_x = (max(-y0, 0), max(y0 + side - h, 0)), (max(-x0, 0), max(x0 + side - w, 0))
    if any(pad_y + pad_x):
        image = np.pad(image, [pad_y, pad_x] + [(0, 0)] * (image.ndim - 2), mode="reflect")
        mask = np.pad(mask, [pad_y, pad_x], mode="constant")  # padding holds no defect
        y0, x0 = y0 + pad_y[0], x0 + pad_x[0]
    img = image[y0:y0 + side, x0:x0 + side]
    msk = mask[y0:y0 + side, x0:x0 + side]
    if side != size:
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC), dtype=np.uint8)
        msk = np.asarray(Image.fromarray(msk.astype(np.float32), "F").resize((size, size), Image.BOX)) > 0
    return np.ascontiguousarray(img), np.ascontiguousarray(msk)


def boundary_points(mask: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` (y, x) pixels on the mask's boundary (mask pixels with a 4-neighbour outside
    it), evenly spaced through the boundary pixels in row-major order: deterministic, spread along
    the outline."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    ys, xs = np.nonzero(edge)
    if ys.size == 0:
        return []
    picks = np.unique(np.linspace(0, ys.size - 1, min(count, ys.size)).round().astype(int))
    return [(int(ys[i]), int(xs[i])) for i in picks]


def boundary_crops(image: np.ndarray, mask: np.ndarray, size: int, count: int = 4) -> list[np.ndarray]:
    """``size`` x ``size`` crops of ``image`` centred on ``boundary_points(mask, count)``, at the source
    scale (no resizing: the seam between defect and fabric as the pixels have it), reflect-padded at
    the image border. The region where a defect meets its surroundings is where a pasted or fused
    defect shows its seam."""
    image = np.asarray(image)
    half = size // 2
    pad = [(half, size - half)] * 2 + [(0, 0)] * (image.ndim - 2)
    padded = np.pad(image, pad, mode="reflect")
    return [np.ascontiguousarray(padded[y:y + size, x:x + size]) for y, x in boundary_points(mask, count)]


@dataclass
class DefectCrops:
    """Defect-centred crops of a dataset: ``images`` uint8 (N, S, S, 3), ``masks`` bool (N, S, S)."""

    names: list[str]
    images: np.ndarray
    masks: np.ndarray
    root: Path

    def __len__(self) -> int:
        return len(self.names)


def _stack(names: list[str], pairs: list[tuple[np.ndarray, np.ndarray]], root: Path, size: int) -> DefectCrops:
    if not pairs:
        return DefectCrops([], np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), bool), root)
    return DefectCrops(names, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), root)


def _read_png(path: Path, mode: str) -> np.ndarray:
    return read_image(path, mode)


def load_dataset_crops(dataset_dir: str | Path, size: int, defect_class: str | None = None,
                       image_folder: str = "images") -> DefectCrops:
    """Defect-centred crops (:func:`crop_around_masks`) of a GENERATED dataset (``defectfill.generation.samples`` layout).

    Samples are the accepted ones (a ``sidecars/<name>.json`` marks a sample complete;
    ``rejected/`` is ignored), read from ``<image_folder>/<name>.png`` (as RGB; ``"clean"``: the
    defect-free image each sample was painted on, same window) and ``masks/<name>.png`` (defect where
    >= 128), sorted by name. ``defect_class`` keeps only that sidecar class.
    A missing file or an empty mask raises DataError naming the file.
    """
    root = Path(dataset_dir)
    sidecars = root / "sidecars"
    if not sidecars.is_dir():
        raise DataError(f"{sidecars}: folder missing (not a generated dataset: no sidecars/)")
    names, pairs = [], []
    for path in sorted(sidecars.glob("*.json")):
        name = path.name[: -len(".json")]
        if defect_class is not None:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise DataError(f"{path}: cannot read sidecar ({err})") from err
            if record.get("defect_class") != defect_class:
                continue
        image_path, mask_path = root / image_folder / f"{name}.png", root / "masks" / f"{name}.png"
        for p in (image_path, mask_path):
            if not p.is_file():
                raise DataError(f"{p}: missing (sample {name} has a sidecar)")
        image, mask = _read_png(image_path, "RGB"), read_mask(mask_path, 128)
        if image.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: size {mask.shape} differs from image {image.shape[:2]}")
        if not mask.any():
            raise DataError(f"{mask_path}: mask is empty (no defect to crop around)")
        names.append(name)
        pairs.append(crop_around_masks(image, mask, size))
    return _stack(names, pairs, root, size)


def load_reference_crops(dataset_dir: str | Path, size: int, defect_types: Sequence[str] | None = None,
                         max_samples: int | None = None) -> DefectCrops:
    """Defect-centred crops of a REFERENCE dataset folder (``images/`` + ``masks/``, as real AITEX).

    Read with :func:`defectfill.data.datasets.load_reference_dataset` (validated; DataError
    naming the file on problems); ``defect_types`` / ``max_samples`` are passed to it.
    """
    ds = load_reference_dataset(dataset_dir, defect_types=defect_types, max_samples=max_samples)
    pairs = [crop_around_masks(s.image, s.mask, size) for s in ds.samples]
    return _stack([s.id for s in ds.samples], pairs, Path(dataset_dir), size)
