"""Training and evaluation tiles for the downstream segmenter.

* :class:`SourceImage` — one full image (uint8, grey HxW or RGB HxWx3) with its bool defect mask
  (all False for defect-free images), the id it is split by and its sampling weight.
* Loaders: :func:`images_from_reference` (``images/`` + ``masks/`` + optional ``good/``, as
  :func:`defectfill.data.load_reference_dataset`), :func:`images_from_synthetic` (a folder written
  by :class:`defectfill.generation.samples.SampleWriter`: accepted samples are those with a sidecar) and
  :func:`load_images`, which picks one of the two by the folder's layout.
* :func:`split_by_source` — train/val split of the *training* images by source id (no id on both sides).
* :class:`TileSet` — stateless, seeded training batches: defect-centred crops (positives) and random
  crops away from any defect (negatives), class-balanced by ``positive_fraction``; the share of
  positives cut from synthetic images is set by ``synthetic_fraction``.
* :class:`EvalTiles` — every evaluation image cut into non-overlapping tiles that cover every pixel
  once (an edge that is not a multiple of the tile gets one extra tile aligned to the edge; its
  ``own`` region excludes the pixels the previous tile already owns).

Tensors: images float ``(B, C, S, S)`` in [0, 1] (C = 1 grey or 3 RGB), masks float ``(B, 1, S, S)``
in {0, 1}. Crops are resized to the training size with antialiased bilinear interpolation; masks are
resized by area and keep every covered pixel (thin or tiny defects survive downsampling).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from defectfill.data.datasets import load_reference_dataset, random_flips
from defectfill.data.fabric import fabric_mask
from defectfill.errors import DataError
from defectfill.formats.images import read_image, read_mask


@dataclass
class SourceImage:
    """One full image and its defect mask.

    ``source_id`` groups images for splitting: a synthetic image carries the id of the clean image
    it was made from, so all derivatives of one photo land on the same side of a split.
    """

    id: str
    image: np.ndarray  # uint8 HxW (grey) or HxWx3 (RGB)
    mask: np.ndarray  # bool HxW, all False for defect-free images
    source_id: str
    origin: str = "real"  # "real" (defect image), "good" (defect-free) or "synthetic"
    weight: float = 1.0  # relative sampling weight in a TileSet

    @property
    def has_defect(self) -> bool:
        return bool(self.mask.any())


# ----------------------------------------------------------------------------- pure helpers


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 HxW (``channels=1``) or HxWx3 (``channels=3``) from a grey or RGB(A) uint8 array.

    Colour becomes grey by PIL's ITU-R 601 luminance, so a grey-replicated RGB image maps back exactly.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.ndim == 2:
        return np.ascontiguousarray(a) if channels == 1 else np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image must be HxW or HxWx3, got shape {a.shape}")
    if channels == 3:
        return np.ascontiguousarray(a)
    if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
        return np.ascontiguousarray(a[..., 0])
    return np.asarray(Image.fromarray(a).convert("L"))


def tile_positions(length: int, tile: int) -> list[tuple[int, int, int]]:
    """``(start, own_from, own_to)`` along one axis so the tiles own every index in ``[0, length)`` once.

    Tiles start at 0, tile, 2*tile, ...; a remainder gets one extra tile aligned to the end
    (``start = length - tile``) that owns only the indices the previous tile did not. An axis shorter
    than ``tile`` gives one tile at 0 (the caller pads it) owning ``[0, length)``.
    """
    if tile < 1 or length < 1:
        raise ValueError(f"need length >= 1 and tile >= 1, got {length}, {tile}")
    if length <= tile:
        return [(0, 0, length)]
    out = [(s, s, s + tile) for s in range(0, length - tile + 1, tile)]
    end = out[-1][2]
    if end < length:
        out.append((length - tile, end, length))
    return out


def crop_padded(array: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """``array[y0:y0+size, x0:x0+size]``, symmetric-padded where the window leaves the array."""
    h, w = array.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + size, h)), slice(max(x0, 0), min(x0 + size, w))
    out = array[ys, xs]
    pad = [(ys.start - y0, y0 + size - ys.stop), (xs.start - x0, x0 + size - xs.stop)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, pad + [(0, 0)] * (array.ndim - 2), mode="symmetric")
    return out


def centred_window(y: int, x: int, height: int, width: int, crop: int,
                   jitter: tuple[int, int]) -> tuple[int, int]:
    """Top-left of a ``crop`` window centred on pixel (y, x), shifted by ``jitter`` = (dy, dx).

    The window is clamped inside the image along axes at least ``crop`` long (else it starts where
    it centres the image axis, for padding) and always contains (y, x).
    """
    def axis(c: int, n: int, d: int) -> int:
        if n <= crop:
            return (n - crop) // 2
        lo, hi = max(0, c - crop + 1), min(c, n - crop)
        return int(min(max(c - crop // 2 + d, lo), hi))

    return axis(y, height, jitter[0]), axis(x, width, jitter[1])


def resize_batch(images: torch.Tensor, masks: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize (B,C,h,w) images (antialiased bilinear) and (B,1,h,w) masks (area, any covered pixel -> 1)."""
    if images.shape[-2:] == (size, size):
        return images, masks
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    masks = (F.interpolate(masks, size=(size, size), mode="area") > 0).float()
    return images.clamp(0.0, 1.0), masks


def to_tensor(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack uint8 HxW / HxWx3 crops into float (B, C, h, w) in [0, 1]."""
    a = np.stack([c if c.ndim == 3 else c[..., None] for c in crops])
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0


# ----------------------------------------------------------------------------- loaders


def _read_image(path: Path, channels: int) -> np.ndarray:
    return to_channels(read_image(path), channels)


def _read_mask(path: Path, threshold: int = 128) -> np.ndarray:
    return read_mask(path, threshold)


def images_from_reference(root: str | Path, channels: int = 1, include_good: bool = True,
                          defect_types: Sequence[str] | None = None) -> list[SourceImage]:
    """Defect images (``images/`` + ``masks/``, validated by ``load_reference_dataset``) and, with
    ``include_good``, the defect-free ``good/`` images (empty masks). Source id = file stem."""
    ds = load_reference_dataset(root, defect_types=defect_types)
    out = [SourceImage(s.id, to_channels(s.image, channels), s.mask, s.id, "real") for s in ds.samples]
    ds.samples.clear()  # drop the RGB copies early
    if include_good:
        for path in ds.good_paths:
            image = _read_image(path, channels)
            out.append(SourceImage(path.stem, image, np.zeros(image.shape[:2], bool), path.stem, "good"))
    return out


def synthetic_source_id(sidecar: dict, name: str) -> str:
    """The split id of a synthetic sample: the stem of its sidecar's ``source_image``, else its name."""
    src = sidecar.get("source_image")
    return Path(str(src)).stem if src else name


def images_from_synthetic(root: str | Path, channels: int = 1, weight: float = 1.0) -> list[SourceImage]:
    """Accepted samples of a generated dataset (``sidecars/<name>.json`` present; ``rejected/`` is ignored)."""
    root = Path(root)
    side_dir = root / "sidecars"
    if not side_dir.is_dir():
        raise DataError(f"{side_dir}: folder missing (not a generated dataset)")
    out = []
    for side in sorted(p for p in side_dir.iterdir() if p.suffix == ".json" and ".tmp" not in p.name):
        name = side.stem
        try:
            sidecar = json.loads(side.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{side}: cannot read sidecar ({err})") from err
        image = _read_image(root / "images" / f"{name}.png", channels)
        mask = _read_mask(root / "masks" / f"{name}.png")
        if mask.shape != image.shape[:2]:
            raise DataError(f"{root / 'masks' / name}.png: mask {mask.shape} != image {image.shape[:2]}")
        out.append(SourceImage(name, image, mask, synthetic_source_id(sidecar, name), "synthetic", weight))
    if not out:
        raise DataError(f"{root}: no accepted samples (no sidecars/*.json)")
    return out


def load_images(root: str | Path, channels: int = 1) -> list[SourceImage]:
    """A generated dataset (has ``sidecars/``) or a reference/evaluation folder (``images/``, ``masks/``, ``good/``)."""
    root = Path(root)
    if (root / "sidecars").is_dir():
        return images_from_synthetic(root, channels)
    return images_from_reference(root, channels)


# ----------------------------------------------------------------------------- splitting


def split_by_source(images: Sequence[SourceImage], val_fraction: float, seed: int
                    ) -> tuple[list[SourceImage], list[SourceImage]]:
    """Seeded train/val split by ``source_id``; no id is on both sides.

    Ids are stratified into those with at least one defect image and the rest; from each stratum
    ``round(val_fraction * n)`` ids go to val (at least 1 when ``val_fraction > 0`` and n >= 2).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    defect_ids = sorted({im.source_id for im in images if im.has_defect})
    clean_ids = sorted({im.source_id for im in images} - set(defect_ids))
    rng = np.random.default_rng([seed, 7])
    val_ids: set[str] = set()
    for ids in (defect_ids, clean_ids):
        n = len(ids)
        k = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        val_ids.update(ids[i] for i in rng.permutation(n)[:k])
    train = [im for im in images if im.source_id not in val_ids]
    val = [im for im in images if im.source_id in val_ids]
    return train, val


# ----------------------------------------------------------------------------- training tiles


class TileSet:
    """Stateless, seeded, class-balanced training crops.

    ``batch(step, batch_size)`` depends only on (seed, step, batch_size): it draws from
    ``np.random.default_rng([seed, step])``. Of a batch, ``floor(p*B)`` crops (plus one with
    probability ``p*B - floor(p*B)``) are positives: a defect image is picked (by weight), then a
    random defect pixel, and a ``crop`` window is centred on it with a uniform jitter of up to
    ``crop//4`` px. The rest are negatives: a random window of a random image (by weight) that holds
    no defect pixel within ``negative_margin`` px; up to 16 draws, after which the last window is kept
    with its true mask. Labels are always the crop's true mask. Random h/v flips when enabled.

    ``synthetic_fraction`` (the mix rule for positives): ``None`` picks the defect image by weight over
    all defect images (synthetic and real alike). A float ``f`` in [0, 1] first picks the group — a
    synthetic defect image (``origin == "synthetic"``) with probability ``f``, else a real one — then
    the image by weight within the group. When one group has no defect image every positive comes from
    the other (no group draw, so the random stream equals ``None``'s); DataError if that group's
    probability is 0 (``f == 0`` with only synthetic, ``f == 1`` with only real defect images).
    Negatives are not affected.
    """

    def __init__(self, images: Sequence[SourceImage], crop: int = 128, size: int = 128, seed: int = 0,
                 positive_fraction: float = 0.5, hflip: bool = True, vflip: bool = True,
                 negative_margin: int = 8, negatives_from_defect_images: bool = True,
                 synthetic_fraction: float | None = None) -> None:
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
        if synthetic_fraction is not None and not 0 <= synthetic_fraction <= 1:
            raise ValueError(f"synthetic_fraction must be in [0, 1] or None, got {synthetic_fraction}")
        if crop < 1 or size < 1:
            raise ValueError(f"crop and size must be >= 1, got {crop}, {size}")
        self.images = list(images)
        if not self.images:
            raise DataError("no images to draw tiles from")
        chans = {im.image.ndim for im in self.images}
        if len(chans) != 1:
            raise DataError("images mix grey (HxW) and RGB (HxWx3); load them with the same channels")
        self.channels = 1 if chans == {2} else 3
        self.crop, self.size, self.seed = crop, size, seed
        self.positive_fraction, self.hflip, self.vflip = positive_fraction, hflip, vflip
        self.negative_margin = negative_margin
        self.positives = [i for i, im in enumerate(self.images) if im.has_defect]
        self.negatives = [i for i, im in enumerate(self.images)
                          if negatives_from_defect_images or not im.has_defect]
        if positive_fraction > 0 and not self.positives:
            raise DataError("positive_fraction > 0 but no image has a defect")
        self.synthetic_fraction = synthetic_fraction
        self._synthetic_positives = [i for i in self.positives if self.images[i].origin == "synthetic"]
        self._real_positives = [i for i in self.positives if self.images[i].origin != "synthetic"]
        if positive_fraction > 0 and synthetic_fraction is not None:
            if synthetic_fraction == 0 and not self._real_positives:
                raise DataError("synthetic_fraction=0 but no real image has a defect")
            if synthetic_fraction == 1 and not self._synthetic_positives:
                raise DataError("synthetic_fraction=1 but no synthetic image has a defect")
        if positive_fraction < 1 and not self.negatives:
            raise DataError("positive_fraction < 1 but there is no image to draw negatives from")
        self._defect_pixels = {i: np.flatnonzero(self.images[i].mask) for i in self.positives}

    def __len__(self) -> int:
        return len(self.images)

    def _pick(self, rng: np.random.Generator, pool: list[int]) -> int:
        w = np.array([self.images[i].weight for i in pool], dtype=np.float64)
        return pool[int(rng.choice(len(pool), p=w / w.sum()))]

    @property
    def has_real_positives(self) -> bool:
        return bool(self._real_positives)

    def _positive_pool(self, rng: np.random.Generator, real_only: bool = False) -> list[int]:
        """The defect images a positive is picked from (the ``synthetic_fraction`` group draw; only the
        real ones when ``real_only``)."""
        if real_only and self._real_positives:
            return self._real_positives
        if self.synthetic_fraction is None or not (self._synthetic_positives and self._real_positives):
            return self.positives
        return self._synthetic_positives if rng.random() < self.synthetic_fraction else self._real_positives

    def _positive(self, rng: np.random.Generator, real_only: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
        k = self._pick(rng, self._positive_pool(rng, real_only))
        im, pixels = self.images[k], self._defect_pixels[k]
        h, w = im.mask.shape
        y, x = np.unravel_index(pixels[int(rng.integers(len(pixels)))], (h, w))
        j = max(self.crop // 4, 0)
        jitter = tuple(int(v) for v in rng.integers(-j, j + 1, size=2))
        y0, x0 = centred_window(int(y), int(x), h, w, self.crop, jitter)
        return crop_padded(im.image, y0, x0, self.crop), crop_padded(im.mask, y0, x0, self.crop), k

    def _negative(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        m = self.negative_margin
        for _attempt in range(16):
            k = self._pick(rng, self.negatives)
            im = self.images[k]
            h, w = im.mask.shape
            y0 = int(rng.integers(max(h - self.crop, 0) + 1)) if h > self.crop else (h - self.crop) // 2
            x0 = int(rng.integers(max(w - self.crop, 0) + 1)) if w > self.crop else (w - self.crop) // 2
            near = im.mask[max(y0 - m, 0):y0 + self.crop + m, max(x0 - m, 0):x0 + self.crop + m]
            if not near.any():
                break
        return crop_padded(im.image, y0, x0, self.crop), crop_padded(im.mask, y0, x0, self.crop), k

    def batch(self, step: int, batch_size: int, real_positives_only: bool = False) -> dict:
        """``images`` (B,C,S,S) in [0,1], ``masks`` (B,1,S,S) in {0,1}, ``ids``, and bool lists
        ``positive`` (defect-centred crop) and ``synthetic`` (cut from a synthetic image).
        ``real_positives_only``: every positive from a real defect image (the fine-tuning phase)."""
        rng = np.random.default_rng([self.seed, step])
        expected = self.positive_fraction * batch_size
        n_pos = int(np.floor(expected)) + int(rng.random() < expected - np.floor(expected))
        crops, masks, picked = [], [], []
        for i in range(batch_size):
            img, msk, k = self._positive(rng, real_positives_only) if i < n_pos else self._negative(rng)
            img, msk = random_flips(img, msk, rng, self.hflip, self.vflip)
            crops.append(img)
            masks.append(msk)
            picked.append(self.images[k])
        images = to_tensor(crops)
        mask_t = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        images, mask_t = resize_batch(images, mask_t, self.size)
        return {"images": images.contiguous(), "masks": mask_t.contiguous(), "ids": [im.id for im in picked],
                "positive": [i < n_pos for i in range(batch_size)],
                "synthetic": [im.origin == "synthetic" for im in picked]}


# ----------------------------------------------------------------------------- evaluation tiles


def fabric_regions(images: Sequence[SourceImage]) -> list[np.ndarray]:
    """Per image, the pixels an on-fabric evaluation counts: fabric (``fabric_mask`` without its
    placement margin) or annotated defect. Off-fabric background (white borders, flat areas) is left
    out as negatives; no defect pixel is ever dropped."""
    return [fabric_mask(im.image, margin=0) | im.mask for im in images]



@dataclass(frozen=True)
class Tile:
    """One evaluation tile: image index, top-left, and the owned region (absolute, end-exclusive)."""

    image_index: int
    y0: int
    x0: int
    own: tuple[int, int, int, int]  # (y_from, y_to, x_from, x_to)


class EvalTiles:
    """Every image cut into ``tile``-px tiles that together own every pixel exactly once.

    Tiles are fed to the model resized to ``size`` (the training size, when crops were resized in
    training) and predictions are resized back. Pixels outside an image (axes shorter than ``tile``)
    are symmetric-padded and never counted.
    """

    def __init__(self, images: Sequence[SourceImage], tile: int, size: int | None = None,
                 regions: Sequence[np.ndarray] | None = None) -> None:
        self.images = list(images)
        if not self.images:
            raise DataError("no evaluation images")
        if regions is not None and (len(regions) != len(self.images) or any(
                r.shape != im.mask.shape for r, im in zip(regions, self.images))):
            raise ValueError("regions must be one HxW map per evaluation image")
        self.regions = None if regions is None else [np.asarray(r, bool) for r in regions]
        self.tile, self.size = tile, size or tile
        self.tiles = [Tile(k, ys, xs, (yf, yt, xf, xt))
                      for k, im in enumerate(self.images)
                      for ys, yf, yt in tile_positions(im.mask.shape[0], tile)
                      for xs, xf, xt in tile_positions(im.mask.shape[1], tile)]

    def __len__(self) -> int:
        return len(self.tiles)

    def own_mask(self, t: Tile) -> np.ndarray:
        """bool (tile, tile): the pixels of this tile that it owns (counted in pixel metrics)."""
        own = np.zeros((self.tile, self.tile), dtype=bool)
        yf, yt, xf, xt = t.own
        own[yf - t.y0:yt - t.y0, xf - t.x0:xt - t.x0] = True
        return own

    def batches(self, batch_size: int):
        """Yield ``(tiles, images (B,C,tile,tile), masks (B,tile,tile) bool, own (B,tile,tile) bool, inside,
        region)``.

        ``inside`` marks tile pixels that lie inside the image (all of them unless the image is
        smaller than the tile); a tile's label and score use only those pixels. ``region`` marks the
        pixels metrics count (``inside`` and, with ``regions``, inside the image's region map).
        """
        for i in range(0, len(self.tiles), batch_size):
            chunk = self.tiles[i:i + batch_size]
            crops, masks, owns, insides, regions = [], [], [], [], []
            for t in chunk:
                im = self.images[t.image_index]
                crops.append(crop_padded(im.image, t.y0, t.x0, self.tile))
                h, w = im.mask.shape
                inside = np.zeros((self.tile, self.tile), dtype=bool)
                inside[:max(min(h - t.y0, self.tile), 0), :max(min(w - t.x0, self.tile), 0)] = True
                masks.append(crop_padded(im.mask, t.y0, t.x0, self.tile) & inside)
                owns.append(self.own_mask(t))
                insides.append(inside)
                regions.append(inside if self.regions is None else
                               crop_padded(self.regions[t.image_index], t.y0, t.x0, self.tile) & inside)
            yield chunk, to_tensor(crops), np.stack(masks), np.stack(owns), np.stack(insides), np.stack(regions)
