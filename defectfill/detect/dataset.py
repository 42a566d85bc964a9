"""Tiled YOLO detection datasets from reference data (+ synthetic datasets) for the detector benchmark.

Layout written under ``out_dir``::

    train/images/<tile>.png   train/labels/<tile>.txt    YOLO "cls xc yc w h", empty = background
    val/images/<tile>.png     val/labels/<tile>.txt
    data.yaml                 path (absolute), train: train/images, val: val/images, names
    manifest.json             options, counts per split / class, sources and one record per tile

Tiles are ``tile`` x ``tile`` crops at x0 = 0, tile, 2*tile, ... (the same along y); when a side is
not a multiple of ``tile`` one extra tile is aligned to the far edge (it overlaps its neighbour), and a
side shorter than ``tile`` is letterboxed (centred, grey :data:`PAD_VALUE`). Tile names follow the
AITEX tile index: ``<source>_x<x0:04d>_y<y0:03d>``.

* reference defect images: only tiles that contain defect pixels are kept, labelled with one box per
  8-connected mask component inside the tile (tiles without defect pixels are dropped: the masks are
  not precise enough to call them clean);
* reference ``good/`` images: every tile (or ``good_tiles_per_image`` evenly spread ones) is written
  as a background image with an empty label file;
* synthetic datasets (the :class:`defectfill.generation.samples.SampleWriter` layout: ``images/``, ``masks/``,
  ``sidecars/`` with ``defect_class``) go to ``train`` only, tiled the same way, labels from masks
  (like reference defect images, tiles without a box are dropped, so every synthetic tile is labelled);
  ``synthetic_fraction`` caps them to that share of the labelled training tiles (:func:`synthetic_cap`).

The split is by SOURCE IMAGE: every tile of an image lands in the split of its image, stratified per
defect type (good images form one more group). ``val`` is the benchmark's own validation set, cut
from the training reference data; a held-out evaluation folder is built with
:func:`build_eval_dataset` (everything in ``val/``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from defectfill.data.datasets import load_reference_dataset
from defectfill.data.masks import mask_components
from defectfill.data.splits import split_by_source  # noqa: F401  (re-exported: detect's split)
from defectfill.errors import ConfigError, DataError
from defectfill.formats.images import IMAGE_EXTS, read_image, read_mask
from defectfill.generation.samples import spread_indices, yolo_lines
from defectfill.runinfo import atomic_directory, atomic_write_text

Box = tuple[int, int, int, int]
PAD_VALUE = 114  # ultralytics' own letterbox grey
SINGLE_CLASS = "defect"
SPLITS = ("train", "val")


# ----------------------------------------------------------------------------- geometry (pure)


def tile_origins(length: int, tile: int) -> list[int]:
    """Tile starts along one axis: 0, tile, 2*tile, ...; a remainder gets one tile aligned to the end.

    ``length <= tile`` gives ``[0]`` (the side is letterboxed instead).
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def letterbox(image: np.ndarray, mask: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Pad sides shorter than ``tile`` to ``tile`` (content centred, grey :data:`PAD_VALUE`, mask False).

    Returns the padded image, mask and the content's ``(x, y)`` offset. Longer sides are left alone.
    """
    h, w = mask.shape
    pad_y, pad_x = max(0, tile - h), max(0, tile - w)
    if not pad_y and not pad_x:
        return image, mask, (0, 0)
    oy, ox = pad_y // 2, pad_x // 2
    spec = [(oy, pad_y - oy), (ox, pad_x - ox)]
    image = np.pad(image, spec + [(0, 0)] * (image.ndim - 2), constant_values=PAD_VALUE)
    return image, np.pad(mask, spec, constant_values=False), (ox, oy)


def iter_tiles(image: np.ndarray, mask: np.ndarray, tile: int,
               centred_gap: int | None = None) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(x0, y0, image_tile, mask_tile)`` over the (letterboxed) image, row by row.

    ``x0``/``y0`` are in letterboxed coordinates (equal to the source's when no padding was needed).
    ``centred_gap`` not None: also a tile centred on each defect (:func:`centred_tile_origins` with that
    ``merge_gap``), origins shared with the grid counted once.
    """
    image, mask, _ = letterbox(image, mask, tile)
    h, w = mask.shape
    origins = [(x0, y0) for y0 in tile_origins(h, tile) for x0 in tile_origins(w, tile)]
    if centred_gap is not None:
        origins = sorted({*origins, *centred_tile_origins(mask, tile, centred_gap)}, key=lambda o: (o[1], o[0]))
    for x0, y0 in origins:
        yield x0, y0, image[y0:y0 + tile, x0:x0 + tile], mask[y0:y0 + tile, x0:x0 + tile]


def split_component(box: Box, pixels: np.ndarray, max_aspect: float) -> list[Box]:
    """Split a long thin component into boxes of aspect ratio about ``<= max_aspect``.

    ``box`` is ``(x0, y0, x1, y1)`` and ``pixels`` the component's bool mask inside it. When the
    box's long/short side ratio exceeds ``max_aspect``, the long side is cut into
    ``ceil(ratio / max_aspect)`` equal segments and each segment gets the box of the component
    pixels inside it (segments without pixels are skipped). Otherwise ``[box]``.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    ratio = max(w, h) / min(w, h)
    if ratio <= max_aspect:
        return [box]
    along_x = w >= h
    length = w if along_x else h
    n = math.ceil(ratio / max_aspect)
    edges = [round(i * length / n) for i in range(n + 1)]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        seg = pixels[:, a:b] if along_x else pixels[a:b, :]
        rows, cols = np.nonzero(seg)
        if rows.size == 0:
            continue
        if along_x:
            out.append((x0 + a + int(cols.min()), y0 + int(rows.min()), x0 + a + int(cols.max()) + 1,
                        y0 + int(rows.max()) + 1))
        else:
            out.append((x0 + int(cols.min()), y0 + a + int(rows.min()), x0 + int(cols.max()) + 1,
                        y0 + a + int(rows.max()) + 1))
    return out


def grow_box(box: Box, min_side: int, width: int, height: int) -> Box:
    """``box`` widened/heightened about its centre to at least ``min_side`` px, kept inside ``width`` x
    ``height`` (shifted back in at an edge; never larger than the image). A side already that long is unchanged.
    """
    x0, y0, x1, y1 = box

    def grow(a: int, b: int, limit: int) -> tuple[int, int]:
        need = min(min_side, limit) - (b - a)
        if need <= 0:
            return a, b
        a, b = a - need // 2, b + need - need // 2
        shift = max(0, -a) - max(0, b - limit)
        return a + shift, b + shift

    x0, x1 = grow(x0, x1, width)
    y0, y1 = grow(y0, y1, height)
    return x0, y0, x1, y1


def tile_boxes(mask: np.ndarray, split_long: float | None = None, min_box_area: int = 1, merge_gap: int = 0,
               min_box_side: int = 1) -> list[Box]:
    """The detector's boxes of a tile mask: one per 8-connected component, or per group of components
    within ``merge_gap`` px (:func:`defectfill.data.masks.mask_components`), optionally split (:func:`split_component`).

    Boxes with ``width * height < min_box_area`` (measured on the defect pixels) are dropped after
    splitting; the rest grow to at least ``min_box_side`` px a side (:func:`grow_box`): a 1-3 px thread
    otherwise makes a box whose IoU halves with a one-pixel shift. Sorted by (y0, x0).
    """
    boxes: list[Box] = []
    for box, pixels in mask_components(mask, merge_gap=merge_gap):
        boxes += split_component(box, pixels, split_long) if split_long else [box]
    boxes = [b for b in boxes if (b[2] - b[0]) * (b[3] - b[1]) >= min_box_area]
    if min_box_side > 1:
        h, w = np.asarray(mask).shape[:2]
        boxes = [grow_box(b, min_box_side, w, h) for b in boxes]
    return sorted(boxes, key=lambda b: (b[1], b[0], b[2], b[3]))


def centred_tile_origins(mask: np.ndarray, tile: int, merge_gap: int = 0) -> list[tuple[int, int]]:
    """Tile origins ``(x0, y0)`` centred on each defect (group) of a whole-image ``mask``, clamped inside it.

    Defect-centred sampling for training: a defect cut by a fixed grid leaves fragment boxes at the tile
    edges; a tile centred on it holds it whole when it fits. One origin per group
    (:func:`defectfill.data.masks.mask_components`), duplicates removed, sorted. The mask must be at least ``tile`` a side
    (letterbox first).
    """
    h, w = mask.shape[:2]
    out = set()
    for (x0, y0, x1, y1), _ in mask_components(mask, merge_gap=merge_gap):
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        out.add((min(max(0, cx - tile // 2), w - tile), min(max(0, cy - tile // 2), h - tile)))
    return sorted(out, key=lambda o: (o[1], o[0]))


def box_fill_stats(masks: Iterable[np.ndarray], tile: int = 256, split_long: float | None = None,
                   min_box_area: int = 1) -> dict:
    """How much of the training boxes is defect: per box, defect pixels inside / box area.

    The boxes are the detector's labels (:func:`iter_tiles` + :func:`tile_boxes`), so the fill is
    the label-noise measure behind ``split_long``: background inside a box is what an irregular or
    long thin defect adds to its label. Returns ``{boxes, mean_fill, median_fill, p10_fill}``.
    """
    fills = []
    for mask in masks:
        mask = np.asarray(mask, dtype=bool)
        for _, _, _, m in iter_tiles(np.zeros(mask.shape, np.uint8), mask, tile):
            for x0, y0, x1, y1 in tile_boxes(m, split_long, min_box_area):
                fills.append(float(m[y0:y1, x0:x1].mean()))
    if not fills:
        return {"boxes": 0, "mean_fill": None, "median_fill": None, "p10_fill": None}
    f = np.asarray(fills)
    return {"boxes": int(f.size), "mean_fill": float(f.mean()), "median_fill": float(np.median(f)),
            "p10_fill": float(np.percentile(f, 10))}


def synthetic_cap(n_real_labelled: int, synthetic_fraction: float | None) -> int | None:
    """Most synthetic labelled tiles so they are at most ``synthetic_fraction`` of all labelled tiles.

    ``floor(f / (1 - f) * n_real_labelled)``; None (no cap) for ``f`` None or 1; 0 for ``f == 0``.
    """
    if synthetic_fraction is None or synthetic_fraction == 1:
        return None
    if not 0 <= synthetic_fraction < 1:
        raise ValueError(f"synthetic_fraction must be in [0, 1] or None, got {synthetic_fraction}")
    return math.floor(synthetic_fraction * n_real_labelled / (1 - synthetic_fraction) + 1e-9)


# ----------------------------------------------------------------------------- readers


def _read_image(path: Path) -> np.ndarray:
    """uint8 HxW (grey source) or HxWx3 array of an image file, any bit depth; DataError naming it."""
    return read_image(path)


def _read_mask(path: Path) -> np.ndarray:
    """Bool mask (grey >= 128 of the file's range, alpha composited); DataError naming it."""
    return read_mask(path, 128)


def _as_grey_if_equal(image: np.ndarray) -> np.ndarray:
    """HxW when the RGB channels are identical (grey replicated by the loader), else the image."""
    if image.ndim == 3 and (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all():
        return image[..., 0]
    return image


def _list_good(root: Path) -> list[Path]:
    """Image files of ``root/good`` (sorted), or [] when there is no such folder."""
    folder = root / "good"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS)


def synthetic_samples(root: str | os.PathLike) -> list[dict]:
    """``{name, image_path, mask_path, defect_class, sidecar}`` per accepted sample of a SampleWriter dataset.

    A sample is complete once its sidecar exists (``sidecars/<name>.json``); rejected samples are
    ignored. DataError naming the folder/file when the layout is not a SampleWriter dataset.
    """
    root = Path(root)
    side_dir = root / "sidecars"
    if not side_dir.is_dir():
        raise DataError(f"{root}: not a synthetic dataset (no sidecars/ folder; expected the SampleWriter layout)")
    out = []
    for sidecar in sorted(side_dir.glob("*.json")):
        if ".tmp" in sidecar.name:
            continue
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{sidecar}: cannot read sidecar ({err})") from err
        if not isinstance(record.get("defect_class"), str):
            raise DataError(f"{sidecar}: sidecar lacks a 'defect_class'")
        name = sidecar.stem
        image_path, mask_path = root / "images" / f"{name}.png", root / "masks" / f"{name}.png"
        for path in (image_path, mask_path):
            if not path.is_file():
                raise DataError(f"{path}: missing (sidecar {sidecar} marks the sample complete)")
        out.append({"name": name, "image_path": image_path, "mask_path": mask_path,
                    "defect_class": record["defect_class"], "sidecar": sidecar})
    if not out:
        raise DataError(f"{side_dir}: no complete samples")
    return out


# ----------------------------------------------------------------------------- writer


class _TileWriter:
    """Writes tiles + YOLO labels into ``<root>/<split>/{images,labels}`` and keeps the manifest records."""

    def __init__(self, root: Path, class_names: list[str], tile: int, split_long: float | None,
                 min_box_area: int, merge_gap: int = 0, min_box_side: int = 1, centre_train: bool = False):
        self.root, self.class_names, self.tile = root, class_names, tile
        self.split_long, self.min_box_area = split_long, min_box_area
        self.merge_gap, self.min_box_side, self.centre_train = merge_gap, min_box_side, centre_train
        self.records: list[dict] = []
        self.dropped = {"tiles_without_defect": 0, "tiles_only_small_boxes": 0}

    def _save(self, split: str, name: str, image: np.ndarray, lines: list[str]) -> None:
        """Write ``<split>/images/<name>.png`` and its label file; DataError on a duplicate name."""
        img_path = self.root / split / "images" / f"{name}.png"
        if img_path.exists():
            raise DataError(f"{img_path}: two tiles are named '{name}' (source ids must be unique across "
                            "reference, good and synthetic images)")
        img_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(_as_grey_if_equal(image))).save(img_path, format="PNG")
        label = self.root / split / "labels" / f"{name}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{line}\n" for line in lines))

    def add_defect_image(self, split: str, source: str, stem: str, image: np.ndarray, mask: np.ndarray,
                         class_id: int, kind: str) -> int:
        """Tile a defect image (the grid, plus train tiles centred on its defects with ``centre_train``); keep
        tiles with defect pixels and at least one box. Returns tiles kept."""
        kept = 0
        centred = self.merge_gap if self.centre_train and split == "train" else None
        for x0, y0, img, msk in iter_tiles(image, mask, self.tile, centred):
            if not msk.any():
                self.dropped["tiles_without_defect"] += 1
                continue
            boxes = tile_boxes(msk, self.split_long, self.min_box_area, self.merge_gap, self.min_box_side)
            if not boxes:
                self.dropped["tiles_only_small_boxes"] += 1
                continue
            name = f"{stem}_x{x0:04d}_y{y0:03d}"
            self._save(split, name, img, yolo_lines(boxes, class_id, self.tile, self.tile))
            self.records.append({"name": name, "split": split, "kind": kind, "source": source, "x0": x0, "y0": y0,
                                 "class": self.class_names[class_id], "boxes": [list(b) for b in boxes]})
            kept += 1
        return kept

    def add_synthetic(self, k: int, root: Path, items: list[dict], class_of) -> dict:
        """Tile the samples of synthetic dataset number ``k`` into train (names ``syn<k>-<name>_x.._y..``)."""
        before = len(self.records)
        for item in items:
            image, mask = _read_image(item["image_path"]), _read_mask(item["mask_path"])
            if image.shape[:2] != mask.shape:
                raise DataError(f"{item['mask_path']}: mask size {mask.shape[::-1]} != image size "
                                f"{image.shape[1::-1]}")
            self.add_defect_image("train", f"{root}:{item['name']}", f"syn{k}-{item['name']}", image, mask,
                                  class_of(item["defect_class"]), "synthetic")
        return {"dir": str(root), "samples": len(items), "tiles": len(self.records) - before}

    def cap_synthetic(self, cap: int | None) -> list[dict]:
        """Keep ``cap`` evenly spread synthetic tiles (in writing order), delete the others; return those removed."""
        syn = [r for r in self.records if r["kind"] == "synthetic"]
        if cap is None or cap >= len(syn):
            return []
        keep = {id(syn[i]) for i in spread_indices(len(syn), cap)}
        removed = [r for r in syn if id(r) not in keep]
        for r in removed:
            (self.root / r["split"] / "images" / f"{r['name']}.png").unlink()
            (self.root / r["split"] / "labels" / f"{r['name']}.txt").unlink()
        self.records = [r for r in self.records if r["kind"] != "synthetic" or id(r) in keep]
        return removed

    def add_good_image(self, split: str, source: str, image: np.ndarray, per_image: int | None) -> int:
        """Tile a defect-free image into background tiles (empty labels). Returns tiles written."""
        tiles = list(iter_tiles(image, np.zeros(image.shape[:2], bool), self.tile))
        chosen = range(len(tiles)) if per_image is None else spread_indices(len(tiles), per_image)
        for i in chosen:
            x0, y0, img, _ = tiles[i]
            name = f"{source}_x{x0:04d}_y{y0:03d}"
            self._save(split, name, img, [])
            self.records.append({"name": name, "split": split, "kind": "good", "source": source, "x0": x0,
                                 "y0": y0, "class": None, "boxes": []})
        return len(chosen)


# ----------------------------------------------------------------------------- builder


def _class_names(ref_types: set[str], syn_types: set[str], class_names: Sequence[str] | None,
                 single_class: bool, allow_absent: bool = False) -> list[str]:
    """The dataset's class list. DataError when an explicit list misses a type that occurs, or names a
    type that does not occur (unless ``allow_absent``: an evaluation folder takes the training set's
    names, some of which it may lack; but at least one must occur)."""
    if single_class:
        if class_names is not None:
            raise ConfigError(f"class_names {list(class_names)} and single_class: true conflict (one class "
                              f"'{SINGLE_CLASS}'); drop one, or set single_class: false")
        return [SINGLE_CLASS]
    found = ref_types | syn_types
    if class_names is None:
        return sorted(found)
    names = list(class_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique and non-empty, got {class_names!r}")
    missing = sorted(found - set(names))
    if missing:
        raise DataError(f"defect type(s) {missing} are not in class_names {names}")
    absent = [n for n in names if n not in found]
    if absent and (not allow_absent or len(absent) == len(names)):
        raise DataError(f"class_names {absent} match no defect type in the data (found: {', '.join(sorted(found))})")
    return names


def _summary(records: list[dict], class_names: list[str]) -> dict:
    """Counts per split: images, labelled, background, boxes, per class, source ids."""
    out = {}
    for split in SPLITS:
        rows = [r for r in records if r["split"] == split]
        per_class = {c: {"tiles": 0, "boxes": 0} for c in class_names}
        for r in rows:
            if r["class"] is not None:
                per_class[r["class"]]["tiles"] += 1
                per_class[r["class"]]["boxes"] += len(r["boxes"])
        out[split] = {
            "images": len(rows), "labelled": sum(1 for r in rows if r["boxes"]),
            "background": sum(1 for r in rows if not r["boxes"]),
            "boxes": sum(len(r["boxes"]) for r in rows), "per_class": per_class,
            "by_kind": {k: sum(1 for r in rows if r["kind"] == k) for k in ("reference", "good", "synthetic")},
            "source_ids": sorted({r["source"] for r in rows if r["kind"] != "synthetic"}),
        }
    return out


def _as_list(values: str | Sequence[str] | None) -> list[str] | None:
    """A single string or a sequence as a list (None stays None)."""
    if values is None:
        return None
    return [values] if isinstance(values, str) else list(values)


def _split_ids(ref, good: list[Path], val_fraction: float, seed: int) -> set[str]:
    """Source ids that go to val: defect images stratified by type, good images as one group."""
    groups: dict[str, list[str]] = {}
    for sample in ref.samples:
        groups.setdefault(sample.defect_type, []).append(sample.id)
    val_ids = split_by_source(groups, val_fraction, seed)
    if not val_ids:
        raise DataError(f"{ref.root}: too few defect images ({len(ref.samples)}) for a val split")
    if good:
        val_ids |= split_by_source({"good": [p.stem for p in good]}, val_fraction, seed)
    return val_ids


def _data_yaml(out_dir: Path, names: list[str], eval_only: bool) -> dict:
    """ultralytics' dataset YAML; an evaluation folder names val/ for train and is marked as such."""
    data = {"path": str(out_dir), "train": "val/images" if eval_only else "train/images", "val": "val/images",
            "names": dict(enumerate(names))}
    if eval_only:
        data["defectfill_role"] = "eval"
    return data


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a non-empty folder that is not a dataset built here (no manifest.json)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir())
                                                     and not (out_dir / "manifest.json").is_file())):
        raise DataError(f"{out_dir}: exists and is not a detection dataset built by defectfill "
                        "(no manifest.json); choose an empty or new folder")


def build_detection_dataset(
    reference_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tile: int = 256,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    synthetic_dirs: Sequence[str | os.PathLike] = (),
    include_good: bool = True,
    split_long: float | None = None,
    min_box_area: int = 1,
    defect_types: Sequence[str] | None = None,
    single_class: bool = False,
    good_tiles_per_image: int | None = None,
    mask_threshold: int = 128,
    synthetic_limit: int | None = None,
    val_ids: Sequence[str] | None = None,
    synthetic_fraction: float | None = 0.3,
    merge_gap: int = 0,
    min_box_side: int = 1,
    centre_tiles: bool = False,
) -> dict:
    """Build a tiled YOLO dataset under ``out_dir`` (replaced atomically); return the manifest dict.

    ``reference_dir``: images/, masks/, optional good/ and manifest.csv (see
    :func:`defectfill.data.datasets.load_reference_dataset`). ``val_fraction`` of the source images
    of each defect type (and of the good images) go to ``val``; ``val_fraction=1.0`` builds an
    evaluation folder (everything in ``val/``; ``data.yaml`` then names ``val/images`` for train too
    and carries ``defectfill_role: eval`` so :func:`train_detector` refuses it). ``synthetic_dirs``
    (SampleWriter datasets) are added to ``train`` only. ``class_names`` default to the sorted defect
    types present (reference + synthetic), or ``["defect"]`` with ``single_class``. ``split_long=k``
    splits components with box aspect ratio > k (label noise for long thin defects);
    ``min_box_area`` drops boxes under that many px² (w*h, in the tile); ``good_tiles_per_image``
    keeps that many evenly spread tiles per good image (None: all); ``synthetic_limit`` keeps the
    first that many samples (by name) of each synthetic dataset. ``val_ids`` (source ids) replaces
    the seeded split, so a caller can reuse a split it made elsewhere. ``synthetic_fraction=f`` keeps
    at most :func:`synthetic_cap` synthetic tiles (evenly spread over all synthetic tiles in writing
    order: datasets in order, samples by name, tiles row by row), so they are at most ``f`` of the
    labelled training tiles; None or 1: no cap, 0: no synthetic tile. Synthetic tiles are always
    labelled (box-less ones are never written), so the cap counts all of them. The manifest's
    ``synthetic_mix`` records the counts before/after the cap and the fraction achieved.
    Boxes for thin defects: ``merge_gap`` px joins nearby components into one box, ``min_box_side`` grows
    every box to at least that side (:func:`tile_boxes`); an evaluation folder must be built with the same
    values as the training set. ``centre_tiles``: TRAIN defect images (reference and synthetic) also get a tile
    centred on each defect (:func:`centred_tile_origins`) besides the grid's: a small defect is then seen
    whole at least once; val and evaluation tiles stay on the grid.
    """
    if tile < 32:
        raise ValueError(f"tile must be >= 32, got {tile}")
    if split_long is not None and split_long < 1:
        raise ValueError(f"split_long must be >= 1 (an aspect ratio), got {split_long}")
    if min_box_area < 1:
        raise ValueError(f"min_box_area must be >= 1, got {min_box_area}")
    if merge_gap < 0 or min_box_side < 1:
        raise ValueError(f"merge_gap must be >= 0 and min_box_side >= 1, got {merge_gap} and {min_box_side}")
    synthetic_cap(0, synthetic_fraction)  # validates the fraction
    eval_only = val_fraction == 1
    if eval_only and synthetic_dirs:
        raise ValueError("synthetic_dirs go to train only; an evaluation folder (val_fraction=1) cannot take them")
    out_dir = Path(out_dir).expanduser().resolve()
    _check_out_dir(out_dir)
    ref = load_reference_dataset(reference_dir, mask_threshold=mask_threshold, defect_types=defect_types)
    syn_sets = [(Path(d).expanduser().resolve(), synthetic_samples(d)[:synthetic_limit]) for d in synthetic_dirs]
    names = _class_names({s.defect_type for s in ref.samples},
                         {s["defect_class"] for _, items in syn_sets for s in items}, class_names, single_class,
                         allow_absent=eval_only)
    good = _list_good(Path(reference_dir)) if include_good else []

    if val_ids is not None:
        val_ids = set(val_ids)
        if not any(s.id in val_ids for s in ref.samples) or all(s.id in val_ids for s in ref.samples):
            raise DataError(f"{reference_dir}: val_ids must hold some but not all defect images")
    else:
        val_ids = _split_ids(ref, good, val_fraction, seed)

    def cls(defect_type: str) -> int:
        return 0 if single_class else names.index(defect_type)

    with atomic_directory(out_dir) as tmp:
        writer = _TileWriter(tmp, names, tile, split_long, min_box_area, merge_gap, min_box_side, centre_tiles)
        for s in ref.samples:
            split = "val" if s.id in val_ids else "train"
            writer.add_defect_image(split, s.id, s.id, s.image, s.mask, cls(s.defect_type), "reference")
        for path in good:
            writer.add_good_image("val" if path.stem in val_ids else "train", path.stem, _read_image(path),
                                  good_tiles_per_image)
        syn_info = [writer.add_synthetic(k, root, items, cls) for k, (root, items) in enumerate(syn_sets)]
        n_real = sum(1 for r in writer.records if r["split"] == "train" and r["kind"] == "reference" and r["boxes"])
        n_syn = sum(1 for r in writer.records if r["kind"] == "synthetic")
        cap = synthetic_cap(n_real, synthetic_fraction)
        removed = writer.cap_synthetic(cap)
        for k, info in enumerate(syn_info):
            info["tiles_before_cap"] = info["tiles"]
            info["tiles"] -= sum(1 for r in removed if r["name"].startswith(f"syn{k}-"))
        n_kept = n_syn - len(removed)
        mix = {"synthetic_fraction": synthetic_fraction, "cap": cap, "real_labelled_tiles": n_real,
               "synthetic_tiles_before_cap": n_syn, "synthetic_tiles": n_kept,
               "fraction_achieved": n_kept / (n_kept + n_real) if n_kept + n_real else None}
        for split in SPLITS:  # ultralytics wants both folders even when one split is empty
            (tmp / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp / split / "labels").mkdir(parents=True, exist_ok=True)
        manifest = {
            "role": "eval" if eval_only else "train", "reference_dir": str(Path(reference_dir).resolve()),
            "tile": tile, "class_names": names, "single_class": single_class, "val_fraction": val_fraction,
            "seed": seed, "split_long": split_long, "min_box_area": min_box_area,
            "merge_gap": merge_gap, "min_box_side": min_box_side, "centre_tiles": centre_tiles, "include_good": include_good,
            "good_tiles_per_image": good_tiles_per_image, "defect_types": _as_list(defect_types),
            "synthetic_limit": synthetic_limit, "synthetic_mix": mix,
            "splits": _summary(writer.records, names), "dropped": writer.dropped,
            "sources": {"reference_train": sorted(s.id for s in ref.samples if s.id not in val_ids),
                        "reference_val": sorted(s.id for s in ref.samples if s.id in val_ids),
                        "good_train": sorted(p.stem for p in good if p.stem not in val_ids),
                        "good_val": sorted(p.stem for p in good if p.stem in val_ids),
                        "synthetic": syn_info},
            "tiles": writer.records,
        }
        atomic_write_text(tmp / "data.yaml", yaml.safe_dump(_data_yaml(out_dir, names, eval_only), sort_keys=False))
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
    return manifest


def train_subset_yaml(data_dir: str | os.PathLike, manifest: dict, kinds: Sequence[str], name: str) -> Path:
    """A data.yaml beside ``data_dir/data.yaml`` (``<name>.yaml`` + ``<name>.txt``) whose train split lists only
    the train tiles of ``kinds`` (``reference``, ``good``, ``synthetic``); val is the dataset's. For training in
    phases on one built dataset, e.g. synthetic pretraining then real fine-tuning. DataError when no train
    tile of those kinds has a box."""
    data_dir = Path(data_dir).expanduser().resolve()
    rows = [r for r in manifest["tiles"] if r["split"] == "train" and r["kind"] in set(kinds)]
    if not any(r["boxes"] for r in rows):
        raise DataError(f"{data_dir}: no labelled train tile of kind {', '.join(kinds)} (nothing to train on)")
    listing = data_dir / f"{name}.txt"
    atomic_write_text(listing, "".join(f"{data_dir / 'train' / 'images' / (r['name'] + '.png')}\n" for r in rows))
    data = yaml.safe_load((data_dir / "data.yaml").read_text())
    data["train"] = str(listing)
    path = data_dir / f"{name}.yaml"
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def build_eval_dataset(reference_dir: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> dict:
    """A held-out evaluation folder: :func:`build_detection_dataset` with ``val_fraction=1.0``.

    Pass the training dataset's ``class_names`` (its manifest's) so that class ids agree.
    """
    if "val_fraction" in kwargs or "synthetic_dirs" in kwargs:
        raise ValueError("build_eval_dataset puts every reference image in val/ and takes no synthetic data")
    return build_detection_dataset(reference_dir, out_dir, val_fraction=1.0, **kwargs)

