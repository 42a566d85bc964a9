"""Realistic defect masks for generation (``--masks auto``): reference shapes, re-placed.

DefectFill (Song et al., CVPR 2025) inpaints a defect into a *given* mask on a clean image
(Sec. 3.3, generation / Low-Fidelity Selection). Random boxes give unrealistic shapes, so
``--masks auto`` takes the mask of a real reference defect of the requested class, crops
it to its bounding box, augments it (flips, 90-degree rotations, scale) and places it at a
random position on the target image, optionally only where ``valid`` (the fabric, see
:mod:`defectfill.data.fabric`). Everything is a pure function of its inputs and the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage, signal

from defectfill.data.datasets import ReferenceDataset

_EIGHT = np.ones((3, 3), dtype=int)  # 8-connectivity
PLACEMENT_BORDER = 8  # px between a placed mask and the image edge (place_on_fabric's default)
SCALE_RANGE = (0.75, 1.25)  # place_on_fabric's default scale of a reference shape


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


class NoFabricPlacement(ValueError):
    """No position puts the whole (augmented) mask inside the valid region."""


@dataclass
class Placement:
    """Where and how a reference mask was placed (see :func:`place_on_fabric`)."""

    index: int  # which reference mask
    flip_h: bool  # left-right flip, applied first
    flip_v: bool  # up-down flip
    k: int  # 90-degree rotations (np.rot90) actually applied, after the flips
    size: tuple[int, int]  # (th, tw) of the placed shape, after resizing
    origin: tuple[int, int]  # (y0, x0) of its top-left corner in the image
    mask: np.ndarray = field(repr=False)  # bool (height, width)
    rejected_positions: int  # uniform positions refused for touching invalid pixels
    crop_shape: tuple[int, int]  # shape of crop_to_bbox(reference_masks[index])

    def transform(self, array: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Apply this placement's flips, rotation and resize to ``array`` (HxW or HxWxC).

        ``array`` is aligned with the reference mask's bounding-box crop (e.g. the defect's
        image crop); returns shape ``size`` (+C) aligned with ``mask[origin:origin+size]``.
        A bool array is resized as float and thresholded at 0.5.
        """
        array = np.asarray(array)
        if array.shape[:2] != self.crop_shape:
            raise ValueError(f"array shape {array.shape} does not match the reference crop {self.crop_shape}")
        out = array[:, ::-1] if self.flip_h else array
        out = out[::-1] if self.flip_v else out
        out = np.ascontiguousarray(np.rot90(out, self.k))
        th, tw = self.size
        if out.shape[:2] == (th, tw):
            return out
        is_bool = out.dtype == bool
        resized = cv2.resize(out.astype(np.float32) if is_bool else out, (tw, th), interpolation=interpolation)
        if resized.ndim < out.ndim:  # cv2 drops a single channel
            resized = resized[:, :, None]
        return resized >= 0.5 if is_bool else resized


def place_reference_mask(
    reference_masks: list[np.ndarray],
    height: int,
    width: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = SCALE_RANGE,
    border: int = PLACEMENT_BORDER,
    allow_rotation: bool = True,
    valid: np.ndarray | None = None,
    max_tries: int = 64,
) -> np.ndarray:
    """A realistic bool (height, width) defect mask: :func:`place_on_fabric`'s ``.mask``.

    Same arguments and random stream; with ``valid=None`` it is the mask this function gave
    before ``valid`` existed.
    """
    return place_on_fabric(
        reference_masks, height, width, rng, valid=valid, scale_range=scale_range,
        border=border, allow_rotation=allow_rotation, max_tries=max_tries,
    ).mask


def place_on_fabric(
    reference_masks: list[np.ndarray],
    height: int,
    width: int,
    rng: np.random.Generator,
    valid: np.ndarray | None = None,
    scale_range: tuple[float, float] = SCALE_RANGE,
    border: int = PLACEMENT_BORDER,
    allow_rotation: bool = True,
    max_tries: int = 64,
) -> Placement:
    """A realistic defect mask for a (height, width) image, from a real reference shape.

    Mask source for DefectFill generation (Sec. 3.3) with ``--masks auto``: picks one
    reference mask, crops it to its bounding box, flips it left-right / up-down (each with
    p = 0.5), rotates it by k*90 degrees (odd k only when ``allow_rotation`` and the
    rotated, scaled box fits; otherwise k-1), scales it by ``U(scale_range)`` (see
    :func:`resize_mask`) and places it at a uniform random position with every pixel at
    least ``border`` px from the image edges. A shape too big for that area is shrunk,
    keeping its aspect ratio, until it fits. Returns a :class:`Placement` with a non-empty
    bool (height, width) mask.

    With ``valid`` (bool (height, width), e.g. :func:`defectfill.data.fabric.fabric_mask`)
    every mask pixel lands where ``valid`` is True: a uniform position touching an invalid
    pixel is redrawn, up to ``max_tries`` draws in all; then one is drawn uniformly among all
    allowed positions. Raises :class:`NoFabricPlacement` when there is none. The shape and
    size do not depend on ``valid``.

    The random stream draws the same values whatever the flags, so a seed gives the same
    reference and flips with or without ``allow_rotation``, and the same mask with or
    without ``valid`` when its first position is allowed. Note that 90-degree rotations
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
    if max_tries < 0:
        raise ValueError(f"max_tries must be >= 0, got {max_tries}")
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != (height, width):
            raise ValueError(f"valid has shape {valid.shape}, expected ({height}, {width})")

    index = int(rng.integers(len(reference_masks)))
    flip_h, flip_v = (bool(f) for f in rng.random(2) < 0.5)
    k = int(rng.integers(4))
    scale = float(rng.uniform(lo, hi))

    crop = crop_to_bbox(reference_masks[index])
    shape = crop[:, ::-1] if flip_h else crop
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

    def uniform_origin() -> tuple[int, int]:
        return int(rng.integers(border, height - border - th + 1)), int(rng.integers(border, width - border - tw + 1))

    rejected = 0
    if valid is None:
        y0, x0 = uniform_origin()
    else:
        for _ in range(max_tries):
            y0, x0 = uniform_origin()
            if valid[y0 : y0 + th, x0 : x0 + tw][shape].all():
                break
            rejected += 1
        else:
            y0, x0 = draw_allowed_origin(shape, valid, border, rng)

    out = np.zeros((height, width), dtype=bool)
    out[y0 : y0 + th, x0 : x0 + tw] = shape
    return Placement(index, flip_h, flip_v, k, (th, tw), (y0, x0), out, rejected, crop.shape)


def draw_allowed_origin(
    shape: np.ndarray, valid: np.ndarray, border: int, rng: np.random.Generator
) -> tuple[int, int]:
    """A uniform top-left (y0, x0) among those putting all of ``shape`` on ``valid``, inside ``border``."""
    height, width = valid.shape
    invalid = ~valid[border : height - border, border : width - border]
    # invalid pixels under the shape for each top-left (exact integers up to FFT rounding)
    hits = signal.fftconvolve(invalid.astype(np.float64), shape[::-1, ::-1].astype(np.float64), mode="valid")
    allowed = np.flatnonzero(hits < 0.5)
    if allowed.size == 0:
        th, tw = shape.shape
        raise NoFabricPlacement(
            f"no room for a {th}x{tw} px defect mask ({int(shape.sum())} px) inside the valid (fabric) "
            f"region, which covers {valid.mean():.1%} of the {height}x{width} image (border {border} px)"
        )
    y, x = np.unravel_index(allowed[int(rng.integers(allowed.size))], hits.shape)
    return int(y) + border, int(x) + border
