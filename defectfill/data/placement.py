"""Realistic defect masks for generation (``--masks auto``): reference shapes, re-placed.

DefectFill (Song et al., CVPR 2025) inpaints a defect into a *given* mask on a clean image
(Sec. 3.3, generation / Low-Fidelity Selection). Random boxes give unrealistic shapes, so
``--masks auto`` takes the mask of a real reference defect of the requested class, crops
it to its bounding box, augments it (flips, 90-degree rotations, scale) and places it at a
random position on the target image. Everything is a pure function of its inputs and the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage

from defectfill.data.datasets import ReferenceDataset

_EIGHT = np.ones((3, 3), dtype=int)  # 8-connectivity


def auto_masks_for(dataset: ReferenceDataset, defect_type: str | None) -> list[np.ndarray]:
    """Reference masks (bool HxW, not copied) of class ``defect_type``; all classes when None.

    The shape source for ``--masks auto`` generation of one defect class.
    Raises ValueError naming the class and the available ones when none match.
    """
    masks = [s.mask for s in dataset.samples if defect_type is None or s.defect_type == defect_type]
    if not masks:
        available = ", ".join(dataset.defect_types) or "none: the dataset has no samples"
        wanted = "any class" if defect_type is None else f"defect class '{defect_type}'"
        raise ValueError(f"{dataset.root}: no reference masks of {wanted} (available: {available})")
    return masks


def crop_to_bbox(mask: np.ndarray) -> np.ndarray:
    """The bool mask cropped to the bounding box of its pixels (ValueError when empty)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty")
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a bool mask to (height, width), keeping blob areas and thin shapes connected.

    Coverage is resampled (area averaging when shrinking, bilinear when growing) and
    thresholded at 0.5, which keeps a blob's area close to ``area * scale**2``. Where that
    would break a shape apart or drop it (a line thinner than the scale step), the shape
    keeps every pixel it touches instead (coverage > 0). Never empty for a non-empty input.
    """
    mask = np.asarray(mask, dtype=bool)
    if height < 1 or width < 1:
        raise ValueError(f"target size must be at least 1x1, got {height}x{width}")
    if mask.shape == (height, width):
        return mask.copy()
    if not mask.any():
        raise ValueError("mask is empty")
    shrink = height <= mask.shape[0] and width <= mask.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    coverage = cv2.resize(mask.astype(np.float32), (width, height), interpolation=interp)
    touched = coverage > 1e-6
    half = coverage >= 0.5
    labels, n = ndimage.label(touched, structure=_EIGHT)
    half_labels, _ = ndimage.label(half, structure=_EIGHT)
    # per touched-shape: how many pieces does the 0.5 threshold leave?
    pairs = np.unique(np.stack([labels[half], half_labels[half]]), axis=1)
    pieces = np.bincount(pairs[0], minlength=n + 1)
    intact = pieces == 1
    intact[0] = False
    out = np.where(intact[labels], half, touched)
    if not out.any():  # safety net (cannot happen: touched is non-empty)
        out[height // 2, width // 2] = True
    return out


def place_reference_mask(
    reference_masks: list[np.ndarray],
    height: int,
    width: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.75, 1.25),
    border: int = 8,
    allow_rotation: bool = True,
) -> np.ndarray:
    """A realistic defect mask for a (height, width) image, from a real reference shape.

    Mask source for DefectFill generation (Sec. 3.3) with ``--masks auto``: picks one
    reference mask, crops it to its bounding box, flips it left-right / up-down (each with
    p = 0.5), rotates it by k*90 degrees (odd k only when ``allow_rotation`` and the
    rotated, scaled box fits; otherwise k-1), scales it by ``U(scale_range)`` (see
    :func:`resize_mask`) and places it at a uniform random position with every pixel at
    least ``border`` px from the image edges. A shape too big for that area is shrunk,
    keeping its aspect ratio, until it fits. Returns a non-empty bool (height, width) mask.

    The random stream draws the same values whatever the flags, so a seed gives the same
    reference and flips with or without ``allow_rotation``. Note that 90-degree rotations
    turn warp defects (vertical in AITEX) into weft-like ones; pass
    ``allow_rotation=False`` where orientation carries meaning.
    """
    if not reference_masks:
        raise ValueError("no reference masks to place")
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    avail_h, avail_w = height - 2 * border, width - 2 * border
    if avail_h < 1 or avail_w < 1:
        raise ValueError(
            f"image {height}x{width} (HxW) is too small for a {border} px border: "
            f"no room left for a mask"
        )
    for i, m in enumerate(reference_masks):
        if np.asarray(m).ndim != 2 or not np.asarray(m).any():
            raise ValueError(f"reference mask {i} is empty or not 2-D (shape {np.asarray(m).shape})")

    index = int(rng.integers(len(reference_masks)))
    flip_h, flip_v = rng.random(2) < 0.5
    k = int(rng.integers(4))
    scale = float(rng.uniform(lo, hi))

    shape = crop_to_bbox(reference_masks[index])
    if flip_h:
        shape = shape[:, ::-1]
    if flip_v:
        shape = shape[::-1]

    def scaled(h: int, w: int) -> tuple[int, int]:
        return max(1, round(h * scale)), max(1, round(w * scale))

    if k % 2 == 1:
        rot_h, rot_w = scaled(shape.shape[1], shape.shape[0])
        if not (allow_rotation and rot_h <= avail_h and rot_w <= avail_w):
            k -= 1
    shape = np.rot90(shape, k)

    h, w = shape.shape
    th, tw = scaled(h, w)
    if th > avail_h or tw > avail_w:  # shrink to fit, keeping the aspect ratio
        fit = min(avail_h / h, avail_w / w)
        th = min(avail_h, max(1, math.floor(h * fit)))
        tw = min(avail_w, max(1, math.floor(w * fit)))
    shape = resize_mask(np.ascontiguousarray(shape), th, tw)

    y0 = int(rng.integers(border, height - border - th + 1))
    x0 = int(rng.integers(border, width - border - tw + 1))
    out = np.zeros((height, width), dtype=bool)
    out[y0 : y0 + th, x0 : x0 + tw] = shape
    return out
