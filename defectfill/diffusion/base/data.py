"""Training data for a fabric inpainting base: crops on fabric and random inpainting masks.

Crops are drawn only where the image shows fabric (``data.fabric.fabric_mask``: no off-fabric
white); on defective images the defect (dilated) is returned as an exclusion map, so the base
learns clean fabric only. Masks are boxes, brush strokes, or real defect shapes from the
reference masks placed anywhere in the crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from defectfill.data.fabric import fabric_mask
from defectfill.data.masks import mask_components
from defectfill.formats.images import read_image

MASK_KINDS = ("box", "stroke", "defect")


@dataclass
class FabricImage:
    id: str
    gray: np.ndarray  # uint8 HxW
    fabric: np.ndarray  # bool HxW: crop centres and crop pixels must lie here
    exclude: np.ndarray  # bool HxW: defect pixels (dilated), kept out of the loss


def load_fabric_images(ref, ids: set[str] | None = None, exclude_margin: int = 4) -> list[FabricImage]:
    """Every defect-free (``good/``) and defective image of a loaded reference dataset ``ref``
    (``data.datasets.load_reference_dataset``; restricted to ``ids`` when given), grey, with its
    fabric map and its dilated defect map."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * exclude_margin + 1,) * 2)
    out: list[FabricImage] = []
    for s in ref.samples:
        if ids is not None and s.id not in ids:
            continue
        gray = s.image[..., 0] if ref.grayscale else cv2.cvtColor(s.image, cv2.COLOR_RGB2GRAY)
        exclude = cv2.dilate(s.mask.astype(np.uint8), kernel).astype(bool)
        out.append(FabricImage(s.id, gray, fabric_mask(gray) & ~exclude, exclude))
    for path in ref.good_paths:
        if ids is not None and path.stem not in ids:
            continue
        image = read_image(path)
        gray = image[..., 0] if image.ndim == 3 else image
        out.append(FabricImage(path.stem, gray, fabric_mask(gray), np.zeros(gray.shape, bool)))
    return out


def defect_shapes(ref, ids: set[str] | None = None, min_area: int = 4) -> list[np.ndarray]:
    """The connected components of every mask of ``ref`` (restricted to ``ids``), each cut to its
    bounding box (bool)."""
    shapes = []
    for s in ref.samples:
        if ids is not None and s.id not in ids:
            continue
        for _, comp in mask_components(s.mask, min_area=min_area):
            shapes.append(comp.copy())
    return shapes


def sample_crop(images: list[FabricImage], crop: int, rng: np.random.Generator, min_fabric: float = 0.95,
                tries: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(grey uint8 crop, bool exclusion map) of size ``crop``: a random image, a random window
    with at least ``min_fabric`` of its pixels on fabric (the best of ``tries`` otherwise)."""
    best = None
    for _ in range(tries):
        im = images[rng.integers(len(images))]
        h, w = im.gray.shape
        if h < crop or w < crop:
            continue
        y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        frac = float(im.fabric[y:y + crop, x:x + crop].mean())
        window = (im.gray[y:y + crop, x:x + crop], im.exclude[y:y + crop, x:x + crop]
                  | ~im.fabric[y:y + crop, x:x + crop])
        if frac >= min_fabric:
            return window
        if best is None or frac > best[0]:
            best = (frac, window)
    if best is None:
        raise ValueError(f"no image is at least {crop}x{crop} px")
    return best[1]


def box_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """1..3 axis-aligned boxes with sides 10..50 % of ``size``."""
    m = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 4)):
        bh, bw = (rng.uniform(0.1, 0.5, 2) * size).astype(int) + 1
        y, x = rng.integers(0, size - bh + 1), rng.integers(0, size - bw + 1)
        m[y:y + bh, x:x + bw] = True
    return m


def stroke_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """1..3 brush strokes: random walks of 2..6 segments, 1..8 % of ``size`` thick (thin yarn-like
    lines to blobs)."""
    m = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        pts = [rng.uniform(0, size, 2)]
        for _ in range(rng.integers(2, 7)):
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.5) * size
            pts.append(np.clip(pts[-1] + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1))
        thick = max(1, int(rng.uniform(0.01, 0.08) * size))
        cv2.polylines(m, [np.round(pts).astype(np.int32)], False, 1, thickness=thick)
    return m.astype(bool)


def shape_mask(size: int, shapes: list[np.ndarray], rng: np.random.Generator, crop: int) -> np.ndarray:
    """A real defect shape (source pixels, seen through a ``crop``-px window resized to ``size``),
    randomly flipped/turned and placed; a shape larger than the window is cut to it."""
    shape = shapes[rng.integers(len(shapes))]
    if rng.random() < 0.5:
        shape = shape[::-1]
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    scale = size / crop
    h, w = max(1, round(shape.shape[0] * scale)), max(1, round(shape.shape[1] * scale))
    shape = cv2.resize(shape.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    if not shape.any():
        shape = np.ones((1, 1), bool)
    h, w = min(h, size), min(w, size)
    y0, x0 = rng.integers(0, shape.shape[0] - h + 1), rng.integers(0, shape.shape[1] - w + 1)
    shape = shape[y0:y0 + h, x0:x0 + w]
    m = np.zeros((size, size), bool)
    y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    m[y:y + h, x:x + w] = shape
    # thin shapes (one-pixel yarn defects) are dilated a little so the hole has context to fill
    if m.sum() < 0.002 * size * size or min(h, w) <= 2:
        m = cv2.dilate(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return m


def inpaint_mask(size: int, rng: np.random.Generator, shapes: list[np.ndarray], crop: int,
                 kinds: tuple[float, float, float] = (0.35, 0.35, 0.3)) -> tuple[np.ndarray, str]:
    """One random inpainting mask (bool size x size) and its kind, drawn with probabilities
    ``kinds`` over (box, stroke, defect shape); without shapes their share goes to boxes."""
    p = np.asarray(kinds, float)
    if not shapes:
        p = np.array([p[0] + p[2], p[1], 0.0])
    kind = MASK_KINDS[rng.choice(3, p=p / p.sum())]
    if kind == "box":
        return box_mask(size, rng), kind
    if kind == "stroke":
        return stroke_mask(size, rng), kind
    return shape_mask(size, shapes, rng, crop), kind


def fabric_batch(images: list[FabricImage], shapes: list[np.ndarray], batch_size: int, crop: int, size: int,
                 rng: np.random.Generator, kinds=(0.35, 0.35, 0.3)) -> dict[str, np.ndarray]:
    """A batch: ``pixels`` float32 (B, size, size) in [-1, 1], ``masks`` and ``exclude`` bool
    (B, size, size). Crops of ``crop`` source px are resized to ``size`` (area) and flipped at random."""
    pixels, masks, exclude = [], [], []
    for _ in range(batch_size):
        gray, excl = sample_crop(images, crop, rng)
        if rng.random() < 0.5:
            gray, excl = gray[:, ::-1], excl[:, ::-1]
        if rng.random() < 0.5:
            gray, excl = gray[::-1], excl[::-1]
        if crop != size:
            gray = cv2.resize(np.ascontiguousarray(gray), (size, size), interpolation=cv2.INTER_AREA)
            excl = cv2.resize(np.ascontiguousarray(excl).astype(np.uint8), (size, size),
                              interpolation=cv2.INTER_AREA) > 0
        pixels.append(gray.astype(np.float32) / 127.5 - 1.0)
        exclude.append(np.ascontiguousarray(excl))
        masks.append(inpaint_mask(size, rng, shapes, crop, kinds)[0])
    return {"pixels": np.stack(pixels), "masks": np.stack(masks), "exclude": np.stack(exclude)}
