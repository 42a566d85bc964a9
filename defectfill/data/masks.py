"""Mask helpers: binarisation, random box masks and connected-component boxes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from defectfill.formats.images import mask_levels


def binarize_mask(array: np.ndarray | Image.Image, threshold: float = 128) -> np.ndarray:
    """Return a bool HxW mask: grey level ``>= threshold`` on the 0..255 scale.

    Accepts L (HxW), LA (HxWx2), RGB (HxWx3) and RGBA (HxWx4) arrays or PIL images of any bit
    depth (16-bit files and uint16 arrays are scaled to 0..255 first, so the threshold is relative
    to the file's range). Colour is reduced to luminance; an alpha channel composites grey over
    black (``v = grey * alpha / 255``). A bool HxW array is returned as a copy.
    """
    if not isinstance(array, Image.Image):
        a = np.asarray(array)
        if a.dtype == bool and a.ndim == 2:
            return a.copy()
        if a.ndim == 2 and a.dtype == np.uint8:
            return a >= threshold
    return mask_levels(array) >= threshold


def random_box_mask(
    height: int,
    width: int,
    num_boxes: int = 30,
    min_frac: float = 0.03,
    max_frac: float = 0.25,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Union of ``num_boxes`` random axis-aligned boxes as a bool HxW mask.

    Each side is uniform in [min_frac, max_frac] of the matching image side (at least
    1 px); each box lies fully inside the image.
    """
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}")
    rng = np.random.default_rng() if rng is None else rng
    hs = np.clip(np.rint(rng.uniform(min_frac, max_frac, num_boxes) * height), 1, height).astype(int)
    ws = np.clip(np.rint(rng.uniform(min_frac, max_frac, num_boxes) * width), 1, width).astype(int)
    ys = rng.integers(0, height - hs + 1)
    xs = rng.integers(0, width - ws + 1)
    mask = np.zeros((height, width), dtype=bool)
    for y, x, h, w in zip(ys, xs, hs, ws):
        mask[y : y + h, x : x + w] = True
    return mask


def random_box_masks(
    batch: int,
    height: int,
    width: int,
    num_boxes: int = 30,
    min_frac: float = 0.03,
    max_frac: float = 0.25,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """A batch of :func:`random_box_mask` masks as a float32 tensor (B, 1, H, W) in {0, 1}."""
    rng = np.random.default_rng() if rng is None else rng
    masks = np.stack(
        [random_box_mask(height, width, num_boxes, min_frac, max_frac, rng) for _ in range(batch)]
    )
    return torch.from_numpy(masks[:, None].astype(np.float32))


def mask_components(mask: np.ndarray, min_area: int = 1,
                    merge_gap: int = 0) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """``(box, pixels)`` per 8-connected component of ``mask`` with ``>= min_area`` pixels.

    ``box`` is ``(x0, y0, x1, y1)`` with exclusive x1/y1; ``pixels`` is a bool array of the box's
    size holding only that component (not neighbours poking into the box). Sorted by (y0, x0).
    ``merge_gap > 0``: components within that many px of each other count as one (grouped by the
    components of ``mask`` dilated by a ``merge_gap + 1`` px square); box and pixels stay those of the
    original mask pixels, so merging never grows a box beyond the defect.
    """
    mask = np.asarray(mask, dtype=bool)
    eight = np.ones((3, 3), dtype=int)
    if merge_gap > 0:
        grown = ndimage.binary_dilation(mask, structure=np.ones((merge_gap + 1, merge_gap + 1), dtype=bool))
        labels = np.where(mask, ndimage.label(grown, structure=eight)[0], 0)
    else:
        labels, _ = ndimage.label(mask, structure=eight)
    out = []
    for label, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        pixels = labels[sl] == label
        if int(pixels.sum()) >= min_area:
            out.append(((sl[1].start, sl[0].start, sl[1].stop, sl[0].stop), pixels))
    return sorted(out, key=lambda c: (c[0][1], c[0][0], c[0][2], c[0][3]))


def mask_to_boxes(mask: np.ndarray, min_area: int = 1) -> list[tuple[int, int, int, int]]:
    """Boxes ``(x0, y0, x1, y1)`` (x1/y1 exclusive) of the 8-connected components of ``mask``.

    Components with fewer than ``min_area`` pixels are dropped; sorted by (y0, x0).
    """
    return [box for box, _ in mask_components(mask, min_area)]
