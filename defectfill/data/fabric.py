"""Where a defect may go: the fabric region of a clean image, and optional user ROI masks.

AITEX line-scan images show off-fabric background as saturated white (about 11% of a clean
image's pixels, up to 30%, mostly at one end). A defect mask placed there labels nothing.
:func:`fabric_mask` finds the fabric (textured, not saturated, not flat) and
:func:`valid_region` combines it with an optional user ROI, for ``place_on_fabric(valid=...)``.
All functions are pure.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from defectfill.errors import DataError
from defectfill.formats.images import mask_levels, open_image


def _luminance(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
    if image.ndim != 2:
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    return image


def _drop_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_area`` pixels."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # background label
    return keep[labels]


def fabric_mask(
    image: np.ndarray,
    saturation: int = 250,
    flat_std: float = 2.0,
    window: int = 15,
    margin: int = 8,
    min_area: int = 100,
) -> np.ndarray:
    """Bool HxW map, True where ``image`` (uint8 HxW, or HxWx3 RGB: luminance) shows fabric.

    Off fabric are saturated pixels (``>= saturation``) and flat, texture-less areas: every
    ``window`` x ``window`` box whose grey-level std is below ``flat_std``, as a whole (the
    box, not only its centre, so a flat patch is excluded up to its edge). Clean-up: off-fabric
    specks and fabric islands of fewer than ``min_area`` px are dropped (an area test keeps
    thin but long white lines excluded, which an opening/closing would fill). Finally the
    fabric is eroded by ``margin`` px, so nothing placed on it touches the off-fabric region;
    the image edges do not erode it.

    Defaults calibrated on the 49 clean AITEX dev images: white background is 255 (std 0);
    woven texture has a 15x15 std of at least ~6 grey levels and no textured surface there
    goes below ~3, so ``flat_std=2`` only catches truly flat areas. Off-fabric fraction:
    0.111 mean, 0.304 max.
    """
    gray = _luminance(image)
    off = gray >= saturation
    if flat_std > 0 and window > 1:
        x = gray.astype(np.float32)
        mean = cv2.boxFilter(x, -1, (window, window), borderType=cv2.BORDER_REFLECT)
        mean_sq = cv2.boxFilter(x * x, -1, (window, window), borderType=cv2.BORDER_REFLECT)
        flat_centres = (mean_sq - mean * mean) < flat_std**2
        box = np.ones((window, window), np.uint8)
        off |= cv2.dilate(flat_centres.view(np.uint8), box).astype(bool)
    fabric = ~off
    if min_area > 1:
        fabric = ~_drop_small(~fabric, min_area)  # fill small holes
        fabric = _drop_small(fabric, min_area)  # remove small specks
    if margin > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
        fabric = cv2.erode(fabric.view(np.uint8), kernel).astype(bool)
    return fabric


def load_roi(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A user ROI mask from an image file: bool ``shape`` (H, W), True (allowed) where non-zero.

    Raises DataError naming the file when it cannot be read or is not H x W.
    """
    path = Path(path)
    roi = mask_levels(open_image(path, "ROI mask")) > 0
    if roi.shape != tuple(shape):
        raise DataError(
            f"{path}: ROI mask is {roi.shape[1]}x{roi.shape[0]} (WxH), the image is {shape[1]}x{shape[0]}"
        )
    return roi


def valid_region(image: np.ndarray, roi: np.ndarray | None = None, **fabric_kw) -> np.ndarray:
    """Where a defect may be placed: :func:`fabric_mask` (``fabric_kw``) and, if given, ``roi``."""
    valid = fabric_mask(image, **fabric_kw)
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != valid.shape:
            raise ValueError(f"roi shape {roi.shape} differs from image shape {valid.shape}")
        valid &= roi
    return valid


def off_fabric_fraction(mask: np.ndarray, valid: np.ndarray) -> float:
    """Fraction of the ``mask`` pixels where ``valid`` is False (0.0 for an empty mask)."""
    mask, valid = np.asarray(mask, dtype=bool), np.asarray(valid, dtype=bool)
    if mask.shape != valid.shape:
        raise ValueError(f"mask shape {mask.shape} differs from valid shape {valid.shape}")
    total = int(mask.sum())
    return float((mask & ~valid).sum() / total) if total else 0.0
