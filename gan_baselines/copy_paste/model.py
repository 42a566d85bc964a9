"""The copy-paste baseline's method, as pure functions (no learning, no state): where a reference
defect's bounding box lands on a target mask (`Fit`, `box_fit`, `fit_matrix`, `warp_fit`), the defect's
signal relative to its own fabric (`defect_signal`, for the "contrast" blend), feathered alpha
compositing (`alpha_blend`) and Poisson image editing (`poisson_blend`), plus the box and input
helpers the control generators share (`bbox`, `grow`, `check_inputs`). The `Generator` adapter that
picks the reference and applies a blend is in generator.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from defectfill.data.datasets import ReferenceSample
from defectfill.generation.compositing import blend_weights

POISSON_GROW = 4  # 3x3 dilation steps of the clone mask: OpenCV erodes it by 3, +1 for the gradient
POISSON_PAD = POISSON_GROW + 2  # context around the window, so the clone region never reaches its frame


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the bounding box of a non-empty bool mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        raise ValueError("empty mask")
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def grow(box: tuple[int, int, int, int], margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` (y0, x0, h, w) grown by `margin` px on every side, clipped to an image of `shape`."""
    y0, x0, h, w = box
    y1, x1 = min(shape[0], y0 + h + margin), min(shape[1], x0 + w + margin)
    y0, x0 = max(0, y0 - margin), max(0, x0 - margin)
    return y0, x0, y1 - y0, x1 - x0


def union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Smallest (y0, x0, h, w) box containing boxes `a` and `b`."""
    y0, x0 = min(a[0], b[0]), min(a[1], b[1])
    return y0, x0, max(a[0] + a[2], b[0] + b[2]) - y0, max(a[1] + a[3], b[1] + b[3]) - x0


def surround_mean(image: np.ndarray, mask: np.ndarray, width: int) -> np.ndarray:
    """Per-channel mean of the surround: pixels outside `mask` within `width` px of it (Euclidean).
    Falls back to the whole image when there is no such pixel (a mask covering everything)."""
    y0, x0, h, w = grow(bbox(mask), width + 1, mask.shape)
    sub_mask = mask[y0:y0 + h, x0:x0 + w]
    distance = ndimage.distance_transform_edt(~sub_mask)
    ring = (distance > 0) & (distance <= max(width, 1))
    pixels = image[y0:y0 + h, x0:x0 + w][ring] if ring.any() else image.reshape(-1, *image.shape[2:])
    return pixels.astype(np.float64).mean(axis=0)


@dataclass(frozen=True)
class Fit:
    """How a reference defect's bounding box lands on the target: flips, k quarter turns (as
    `np.rot90`), the placed size (h, w) and top-left (y, x). A `Placement` has these fields."""

    flip_h: bool
    flip_v: bool
    k: int
    size: tuple[int, int]
    origin: tuple[int, int]


def box_fit(dst_box: tuple[int, int, int, int]) -> Fit:
    """No flips or turns: the reference box resized onto ``dst_box`` (y0, x0, h, w)."""
    return Fit(False, False, 0, (dst_box[2], dst_box[3]), (dst_box[0], dst_box[1]))


def fit_matrix(src_box: tuple[int, int, int, int], fit: Fit, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """2x3 affine from target pixel indices (minus ``offset`` (y, x)) to reference pixel indices,
    for ``cv2.warpAffine(..., WARP_INVERSE_MAP)``: crop to ``src_box``, flip, turn k times as
    `np.rot90`, scale to ``fit.size``, move to ``fit.origin``. Exact for integer moves."""
    y0, x0, h, w = src_box

    def t(dx, dy):
        return np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1.0]])

    forward = t(-x0, -y0)  # continuous coordinates: pixel i spans [i, i + 1)
    if fit.flip_h:
        forward = np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]]) @ forward
    if fit.flip_v:
        forward = np.array([[1.0, 0, 0], [0, -1, h], [0, 0, 1]]) @ forward
    for _ in range(fit.k % 4):  # np.rot90: new[i, j] = old[j, W - 1 - i]
        forward = np.array([[0.0, 1, 0], [-1, 0, w], [0, 0, 1]]) @ forward
        h, w = w, h
    th, tw = fit.size
    forward = t(fit.origin[1] - offset[1], fit.origin[0] - offset[0]) @ np.diag([tw / w, th / h, 1.0]) @ forward
    index = t(-0.5, -0.5) @ forward @ t(0.5, 0.5)
    return np.linalg.inv(index)[:2]


def warp_fit(source: np.ndarray, src_box: tuple[int, int, int, int], fit: Fit, window: tuple[int, int, int, int],
             border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
    """``source`` (float32) resampled onto the target ``window`` (y0, x0, h, w) as `fit` places its
    box (bilinear): the reference defect with its real context around it."""
    matrix = fit_matrix(src_box, fit, offset=(window[0], window[1]))
    return cv2.warpAffine(source, matrix, (window[3], window[2]), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=border)


def defect_signal(image: np.ndarray, mask: np.ndarray, grow_px: int = 2, radius: int = 5) -> np.ndarray:
    """The defect relative to its own fabric: ``image − fabric`` on ``mask`` (0 elsewhere), float32,
    where ``fabric`` is the uint8 ``image`` with the mask grown by ``grow_px`` px filled in by
    OpenCV's Telea inpainting (``radius`` px). Computed on the mask's box plus a margin."""
    by, bx, bh, bw = grow(bbox(mask), grow_px + 2 * radius + 2, mask.shape)
    sub = np.ascontiguousarray(image[by:by + bh, bx:bx + bw])
    sub_mask = mask[by:by + bh, bx:bx + bw]
    hole = sub_mask.astype(np.uint8)
    if grow_px:
        hole = cv2.dilate(hole, np.ones((2 * grow_px + 1,) * 2, np.uint8))
    fabric = cv2.inpaint(sub, hole, radius, cv2.INPAINT_TELEA).astype(np.float32)
    keep = sub_mask if image.ndim == 2 else sub_mask[..., None]
    signal = np.zeros(image.shape, np.float32)
    signal[by:by + bh, bx:bx + bw] = np.where(keep, sub.astype(np.float32) - fabric, 0.0)
    return signal


def alpha_blend(clean: np.ndarray, pasted: np.ndarray, mask: np.ndarray, feather: int) -> np.ndarray:
    """Feathered alpha compositing: alpha 1 on `mask`, linear fall-off over `feather` px, 0 beyond
    (`blend_weights`); pixels with alpha 0 are `clean` unchanged."""
    alpha = blend_weights(mask, feather)
    a = alpha if clean.ndim == 2 else alpha[..., None]
    mixed = np.clip(np.rint(a * pasted + (1 - a) * clean.astype(np.float32)), 0, 255).astype(np.uint8)
    return np.where(a > 0, mixed, clean)


def poisson_blend(clean: np.ndarray, pasted: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Poisson image editing with `cv2.seamlessClone` (NORMAL_CLONE): the patch's gradients inside
    the mask grown by `POISSON_GROW` px, the clean image as boundary; `clean` elsewhere.

    `pasted` covers the window plus `POISSON_PAD` px on every side (real reference context), and
    the clean window is reflect-padded by as much, so a mask at the image edge still has clean
    boundary around it (seamlessClone fixes the pixels on its region's bounding rectangle)."""
    pad = POISSON_PAD
    region = cv2.dilate(np.pad(mask, pad).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=POISSON_GROW)
    as3 = (lambda a: np.repeat(a[..., None], 3, axis=2)) if clean.ndim == 2 else (lambda a: a)
    dst = cv2.copyMakeBorder(as3(clean), pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    src = as3(np.clip(np.rint(pasted), 0, 255).astype(np.uint8))
    x, y, w, h = cv2.boundingRect(region)
    cloned = cv2.seamlessClone(src, dst, region * 255, (x + w // 2, y + h // 2), cv2.NORMAL_CLONE)
    cloned, keep = cloned[pad:-pad, pad:-pad], region[pad:-pad, pad:-pad] > 0
    if clean.ndim == 2:
        cloned = cloned[..., 0]
    return np.where(keep if clean.ndim == 2 else keep[..., None], cloned, clean)


def reference_pixels(sample: ReferenceSample, grayscale: bool) -> np.ndarray:
    """The reference image as uint8, HxW (luminance) for grayscale targets, else HxWx3 RGB."""
    return cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY) if grayscale else sample.image


def check_inputs(clean: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 HxW or HxWx3 clean image and a non-empty bool HxW mask of the same size."""
    clean, mask = np.asarray(clean), np.asarray(mask).astype(bool)
    if clean.dtype != np.uint8 or not (clean.ndim == 2 or (clean.ndim == 3 and clean.shape[2] == 3)):
        raise ValueError(f"clean must be uint8 HxW or HxWx3, got {clean.dtype} {clean.shape}")
    if mask.shape != clean.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the clean image {clean.shape[:2]}")
    if not mask.any():
        raise ValueError("mask is empty")
    return clean, mask
