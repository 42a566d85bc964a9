"""Labelled-sample writer shared by the generators: images, masks, YOLO labels, COCO, sidecars.

Layout under ``root`` (every file is written to ``<file>.tmp-<pid>`` and renamed into place)::

    images/<name>.png     L (2-D input) or RGB
    masks/<name>.png      0/255 L
    labels/<name>.txt     YOLO "cls xc yc w h", one line per 8-connected mask component
    clean/<name>.png      defect-free input, only when given (contact sheet)
    sidecars/<name>.json  metadata + boxes; written LAST, its presence marks the sample complete
    rejected/{images,masks,clean,sidecars}/   samples kept for review, never exported
    data.yaml, annotations.json, contact_sheet.png    written by SampleWriter.finalize()

Boxes are pixel-edge ``(x0, y0, x1, y1)`` with exclusive ``x1``/``y1`` (as ``mask_to_boxes``),
so a box's width is ``x1 - x0`` and the COCO bbox is ``[x0, y0, x1 - x0, y1 - y0]``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_util

from defectfill.data.masks import mask_components, mask_to_boxes
from defectfill.errors import DataError
from defectfill.formats.images import read_image, read_mask
from defectfill.generators import Sample  # the record every generator speaks; written here
from defectfill.runinfo import atomic_save_image, atomic_write_text

Box = tuple[int, int, int, int]
boxes_from_mask = mask_to_boxes  # the writer's name for the shared labeller

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TMP_MARK = ".tmp"  # atomic_write_text and _save_png write "<file>.tmp-<pid>"

CELL = 192  # contact-sheet cell side (px)
GAP = 4  # contact-sheet spacing (px)
TITLE_H = 24  # contact-sheet title bar height (px)
COLUMNS = ("clean", "mask", "result")
_BG = (32, 32, 32)
_PAD = (64, 64, 64)
_NO_CLEAN = (128, 128, 128)
_RED = (255, 0, 0)


# ----------------------------------------------------------------------------- pure label functions


def yolo_lines(boxes: list[Box], class_id: int, width: int, height: int) -> list[str]:
    """YOLO label lines ``"cls xc yc w h"`` normalised to the image size, 6 decimals."""
    lines = []
    for x0, y0, x1, y1 in boxes:
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"box {(x0, y0, x1, y1)} is empty or outside a {width}x{height} image")
        xc, yc = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height
        w, h = (x1 - x0) / width, (y1 - y0) / height
        lines.append(f"{int(class_id)} {xc:.6f} {yc:.6f} {w:.6f} {h:.6f}")
    return lines


def yolo_to_boxes(lines: list[str], width: int, height: int) -> tuple[list[Box], list[int]]:
    """Inverse of :func:`yolo_lines`: pixel boxes (rounded to whole pixels) and class ids.

    Blank lines are skipped; a malformed line raises ValueError naming its 1-based number.
    """
    boxes, class_ids = [], []
    for i, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 5:
                raise ValueError
            cls = int(parts[0])
            xc, yc, w, h = (float(p) for p in parts[1:])
        except ValueError:
            raise ValueError(f"YOLO line {i} is not 'cls xc yc w h': {line!r}") from None
        boxes.append((round((xc - w / 2) * width), round((yc - h / 2) * height),
                      round((xc + w / 2) * width), round((yc + h / 2) * height)))
        class_ids.append(cls)
    return boxes, class_ids


def coco_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a bool HxW mask: ``{"size": [h, w], "counts": str}`` (JSON-able)."""
    rle = mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def crop_window(box: Box | None, width: int, height: int, min_side: int = 64, context: float = 2.0) -> Box:
    """Crop ``(x0, y0, x1, y1)`` centred on ``box`` and clamped inside the image.

    Its side is ``max(min_side, context * longest box side)``; along an image side shorter than
    that (e.g. the 256 px of a 4096x256 line scan) the crop spans the whole side instead, so it is
    only square when the image allows it. ``box=None`` centres the crop on the image.
    """
    if box is None:
        box = (width // 2, height // 2, width // 2 + 1, height // 2 + 1)
    x0, y0, x1, y1 = box
    side = max(min_side, math.ceil(context * max(x1 - x0, y1 - y0)))
    cw, ch = min(side, width), min(side, height)
    cx = min(max(round((x0 + x1 - cw) / 2), 0), width - cw)
    cy = min(max(round((y0 + y1 - ch) / 2), 0), height - ch)
    return cx, cy, cx + cw, cy + ch


# ----------------------------------------------------------------------------- file helpers


def _save_png(array: np.ndarray, path: Path) -> Path:
    """Write ``array`` (uint8 HxW -> L, HxWx3 -> RGB) as PNG via a temp file + rename."""
    return atomic_save_image(Image.fromarray(np.ascontiguousarray(array)), path)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _read_sidecar(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read sidecar {path}: {e}") from e
    for key, kind in (("defect_class", str), ("width", int), ("height", int), ("boxes", list)):
        if not isinstance(record.get(key), kind):
            raise DataError(f"sidecar {path} lacks a valid '{key}'")
    return record


def _read_mask(path: Path) -> np.ndarray:
    return read_mask(path, 128)


def _read_rgb(path: Path) -> np.ndarray:
    return read_image(path, "RGB")


def _stems(folder: Path, suffix: str) -> set[str]:
    """Stems of the complete ``*<suffix>`` files in ``folder`` (temp files excluded)."""
    if not folder.is_dir():
        return set()
    return {p.name[: -len(suffix)] for p in folder.iterdir() if p.is_file() and p.name.endswith(suffix)}


def _remove_incomplete(folder: Path, suffix: str, keep: set[str]) -> list[str]:
    """Delete temp files and ``<stem><suffix>`` files whose stem is not in ``keep``; return their names."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.iterdir()):
        if not p.is_file():
            continue
        stray_tmp = _TMP_MARK in p.name
        orphan = p.name.endswith(suffix) and p.name[: -len(suffix)] not in keep
        if stray_tmp or orphan:
            p.unlink(missing_ok=True)
            removed.append(str(p))
    return removed


# ----------------------------------------------------------------------------- contact sheet


def native_window(box: Box | None, width: int, height: int, cell: int = CELL) -> tuple[Box, int]:
    """A contact-sheet window around ``box`` at native resolution: ``(window, zoom)``.

    The window is :func:`crop_window`'s (64 px or twice the defect) when that fits a ``cell``, shown
    enlarged by the integer ``zoom = cell // side`` (nearest neighbour, pixels stay pixels); a larger
    one is cut to a ``cell``-wide window centred on the defect and shown 1:1, never shrunk, so 1-3 px
    threads stay visible (a long defect is shown in part)."""
    x0, y0, x1, y1 = crop_window(box, width, height)
    side = max(x1 - x0, y1 - y0)
    if side <= cell:
        return (x0, y0, x1, y1), max(1, cell // side)
    return crop_window(box, width, height, min_side=cell, context=0.0), 1


def zoom_cell(array: np.ndarray, zoom: int, cell: int = CELL) -> tuple[Image.Image, int, int]:
    """A crop enlarged ``zoom`` times (nearest neighbour) and its paste offset inside a ``cell`` square."""
    h, w = array.shape[:2]
    im = Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    if zoom > 1:
        im = im.resize((w * zoom, h * zoom), Image.NEAREST)
    return im, (cell - im.width) // 2, (cell - im.height) // 2


def outline_boxes(im: Image.Image, boxes: list[Box], window: Box, zoom: int) -> None:
    """Red 1 px outlines of the ``boxes`` that meet ``window``, 2 px outside each defect (so a thin
    thread is not hidden under its own box), on ``im`` = the window's crop enlarged ``zoom`` times."""
    x0, y0, x1, y1 = window
    draw = ImageDraw.Draw(im)
    for bx0, by0, bx1, by1 in boxes:
        if bx1 <= x0 or bx0 >= x1 or by1 <= y0 or by0 >= y1:
            continue
        left, top = (bx0 - x0) * zoom - 2, (by0 - y0) * zoom - 2
        right, bottom = (bx1 - x0) * zoom + 1, (by1 - y0) * zoom + 1
        draw.rectangle([max(left, 0), max(top, 0), min(right, im.width - 1), min(bottom, im.height - 1)],
                       outline=_RED, width=1)


def _sheet_row(image: np.ndarray, mask: np.ndarray, clean: np.ndarray | None, boxes: list[Box],
               name: str, font) -> Image.Image:
    """One contact-sheet row (clean | mask | result) as a (3 cells + gaps) x CELL image, at native
    resolution around the first box (:func:`native_window`); boxes drawn 2 px outside the defect."""
    h, w = mask.shape
    window, zoom = native_window(boxes[0] if boxes else None, w, h)
    x0, y0, x1, y1 = window
    row = Image.new("RGB", (3 * CELL + 2 * GAP, CELL), _PAD)
    if clean is None:
        cell = Image.new("RGB", (CELL, CELL), _NO_CLEAN)
        ImageDraw.Draw(cell).text((6, CELL // 2 - 6), "no clean image", fill=(230, 230, 230), font=font)
        row.paste(cell, (0, 0))
    else:
        im, ox, oy = zoom_cell(clean[y0:y1, x0:x1], zoom)
        row.paste(im, (ox, oy))
    im, ox, oy = zoom_cell((mask[y0:y1, x0:x1] * 255).astype(np.uint8), zoom)
    row.paste(im, (CELL + GAP + ox, oy))
    im, ox, oy = zoom_cell(image[y0:y1, x0:x1], zoom)
    outline_boxes(im, boxes, window, zoom)
    row.paste(im, (2 * (CELL + GAP) + ox, oy))
    label = ImageDraw.Draw(row)
    tw = label.textlength(name, font=font)
    label.rectangle([0, 0, tw + 6, 14], fill=(0, 0, 0))
    label.text((3, 1), name, fill=(255, 255, 255), font=font)
    return row


def contact_sheet_size(rows: int) -> tuple[int, int]:
    """(width, height) of a contact sheet with ``rows`` sample rows."""
    return 3 * CELL + 4 * GAP, TITLE_H + rows * (CELL + GAP) + GAP


def spread_indices(n: int, k: int) -> list[int]:
    """Up to ``k`` indices evenly spread over ``range(n)``, first and last included."""
    if n <= 0 or k <= 0:
        return []
    if k >= n:
        return list(range(n))
    if k == 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


# ----------------------------------------------------------------------------- writer


class SampleWriter:
    """Writes :class:`Sample` files under ``root`` and exports YOLO/COCO with :meth:`finalize`.

    Several processes may write disjoint names into the same root; call :meth:`finalize` once,
    after all of them have finished (it deletes files of samples that have no sidecar yet).
    """

    def __init__(self, root: str | os.PathLike, class_names: list[str], min_component_area: int = 1,
                 contact_sheet_samples: int = 12):
        names = list(class_names)
        if not names or not all(isinstance(c, str) and c for c in names) or len(set(names)) != len(names):
            raise ValueError(f"class_names must be unique non-empty strings, got {class_names!r}")
        if int(min_component_area) < 1:
            raise ValueError(f"min_component_area must be >= 1, got {min_component_area}")
        if int(contact_sheet_samples) < 0:
            raise ValueError(f"contact_sheet_samples must be >= 0, got {contact_sheet_samples}")
        self.root = Path(root).expanduser().resolve()
        self.class_names = names
        self.min_component_area = int(min_component_area)
        self.contact_sheet_samples = int(contact_sheet_samples)
        for sub in ("images", "masks", "labels", "sidecars"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths
    def _dir(self, kind: str, rejected: bool = False) -> Path:
        return self.root / "rejected" / kind if rejected else self.root / kind

    def _files(self, name: str, rejected: bool) -> dict[str, Path]:
        files = {k: self._dir(k, rejected) / f"{name}.png" for k in ("images", "masks", "clean")}
        files["sidecars"] = self._dir("sidecars", rejected) / f"{name}.json"
        if not rejected:
            files["labels"] = self._dir("labels") / f"{name}.txt"
        return files

    def class_id(self, defect_class: str) -> int:
        """Index of ``defect_class`` in ``class_names``; ValueError naming it when unknown."""
        try:
            return self.class_names.index(defect_class)
        except ValueError:
            raise ValueError(f"unknown defect class {defect_class!r}; known: {self.class_names}") from None

    # -- writing
    def _check(self, sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Validated (image, bool mask, clean) of ``sample``; ValueError naming the sample."""
        name = sample.name
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or _TMP_MARK in name:
            raise ValueError(f"sample name {name!r} is not a plain file stem ([A-Za-z0-9_.-], no '.tmp')")
        image = np.asarray(sample.image)
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(f"sample {name}: image must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
        mask = np.asarray(sample.mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"sample {name}: mask shape {mask.shape} != image size {image.shape[:2]}")
        clean = None if sample.clean is None else np.asarray(sample.clean)
        if clean is not None and (clean.dtype != np.uint8 or clean.shape != image.shape):
            raise ValueError(f"sample {name}: clean must be uint8 {image.shape}, got {clean.dtype} {clean.shape}")
        self.class_id(sample.defect_class)
        return image, mask.astype(bool), clean

    def _sidecar_text(self, sample: Sample, image: np.ndarray, boxes: list[Box], **extra) -> str:
        record = {**dict(sample.sidecar), "name": sample.name, "defect_class": sample.defect_class,
                  "boxes": [list(b) for b in boxes], "width": int(image.shape[1]),
                  "height": int(image.shape[0]), **extra}
        try:
            return json.dumps(record, indent=2, default=_json_default)
        except (TypeError, ValueError) as e:
            raise ValueError(f"sample {sample.name}: sidecar is not JSON-serialisable: {e}") from e

    def _write_files(self, sample: Sample, rejected: bool, **extra) -> Path:
        image, mask, clean = self._check(sample)
        boxes = boxes_from_mask(mask, self.min_component_area)
        text = self._sidecar_text(sample, image, boxes, **extra)  # fail before touching any file
        files = self._files(sample.name, rejected)
        files["sidecars"].unlink(missing_ok=True)  # an overwrite is incomplete until its new sidecar lands
        _save_png(image, files["images"])
        _save_png(mask.astype(np.uint8) * 255, files["masks"])
        if "labels" in files:
            lines = yolo_lines(boxes, self.class_id(sample.defect_class), image.shape[1], image.shape[0])
            atomic_write_text(files["labels"], "".join(f"{line}\n" for line in lines))
        if clean is not None:
            _save_png(clean, files["clean"])
        else:
            files["clean"].unlink(missing_ok=True)
        atomic_write_text(files["sidecars"], text)
        return files["images"]

    def write(self, sample: Sample) -> Path:
        """Write an accepted sample (sidecar last), replacing a rejected copy of that name; returns the image path."""
        path = self._write_files(sample, rejected=False)
        for p in self._files(sample.name, rejected=True).values():
            p.unlink(missing_ok=True)
        return path

    def write_rejected(self, sample: Sample, reason: str) -> Path:
        """Keep a rejected sample under ``rejected/`` (never exported). Returns the image path."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"sample {sample.name}: a rejection needs a non-empty reason")
        if self._files(sample.name, rejected=False)["sidecars"].exists():
            raise ValueError(f"sample {sample.name} is already accepted in {self.root}")
        return self._write_files(sample, rejected=True, reason=reason)

    # -- resume
    def is_done(self, name: str) -> bool:
        """True once ``name`` has a sidecar (accepted or rejected)."""
        return any(self._files(name, r)["sidecars"].is_file() for r in (False, True))

    def completed_names(self) -> set[str]:
        """Names of all complete samples, accepted and rejected."""
        return self.accepted_names() | _stems(self._dir("sidecars", True), ".json")

    def sidecars(self, rejected: bool = False) -> list[dict]:
        """The complete samples' sidecar records (accepted, or those under ``rejected/``), by name."""
        folder = self._dir("sidecars", rejected)
        return [_read_sidecar(folder / f"{n}.json") for n in sorted(_stems(folder, ".json"))]

    def accepted_names(self) -> set[str]:
        """Names of complete accepted samples."""
        return _stems(self._dir("sidecars"), ".json")

    # -- export
    def _cleanup(self) -> list[str]:
        """Remove temp files, files of samples without a sidecar and rejected copies of accepted names."""
        accepted = self.accepted_names()
        rejected = _stems(self._dir("sidecars", True), ".json") - accepted
        removed = []
        for is_rej, keep in ((False, accepted), (True, rejected)):
            for kind, suffix in (("images", ".png"), ("masks", ".png"), ("clean", ".png"),
                                 ("labels", ".txt"), ("sidecars", ".json")):
                if not (is_rej and kind == "labels"):
                    removed += _remove_incomplete(self._dir(kind, is_rej), suffix, keep)
        return removed

    def finalize(self) -> dict:
        """Clean up, then write ``data.yaml``, ``annotations.json`` and ``contact_sheet.png``; return a summary.

        Labels are recomputed from the masks with this writer's ``class_names`` and
        ``min_component_area``, so YOLO and COCO agree even when several writers were merged.
        COCO category ids are ``class index + 1``; image/annotation ids follow the sorted names.
        """
        removed = self._cleanup()
        names = sorted(self.accepted_names())
        coco = {"images": [], "annotations": [],
                "categories": [{"id": i + 1, "name": c} for i, c in enumerate(self.class_names)]}
        per_class = {c: {"samples": 0, "boxes": 0} for c in self.class_names}
        all_boxes: dict[str, list[Box]] = {}
        for image_id, name in enumerate(names, start=1):
            files = self._files(name, rejected=False)
            record = _read_sidecar(files["sidecars"])
            if record["defect_class"] not in self.class_names:
                raise DataError(f"sidecar {files['sidecars']}: defect class {record['defect_class']!r} "
                                f"not in {self.class_names}")
            cls = self.class_names.index(record["defect_class"])
            if not files["images"].is_file():
                raise DataError(f"sidecar {files['sidecars']} has no image {files['images']}")
            mask = _read_mask(files["masks"]) if files["masks"].is_file() else None
            if mask is None or mask.shape != (record["height"], record["width"]):
                raise DataError(f"mask {files['masks']} is missing or not {record['width']}x{record['height']} "
                                f"as its sidecar says")
            h, w = mask.shape
            components = mask_components(mask, self.min_component_area)
            boxes = [box for box, _ in components]
            label_text = "".join(f"{line}\n" for line in yolo_lines(boxes, cls, w, h))
            if not files["labels"].is_file() or files["labels"].read_text() != label_text:
                atomic_write_text(files["labels"], label_text)
            coco["images"].append({"id": image_id, "file_name": f"images/{name}.png", "width": w, "height": h})
            for (x0, y0, x1, y1), pixels in components:
                full = np.zeros((h, w), dtype=bool)
                full[y0:y1, x0:x1] = pixels
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": cls + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(pixels.sum()), "iscrowd": 0,
                    "segmentation": coco_rle(full)})
            per_class[record["defect_class"]]["samples"] += 1
            per_class[record["defect_class"]]["boxes"] += len(boxes)
            all_boxes[name] = boxes
        data = {"path": str(self.root), "train": "images", "val": "images",
                "names": dict(enumerate(self.class_names))}
        atomic_write_text(self.root / "data.yaml", yaml.safe_dump(data, sort_keys=False))
        atomic_write_text(self.root / "annotations.json", json.dumps(coco))
        chosen = [names[i] for i in spread_indices(len(names), self.contact_sheet_samples)]
        sheet = self._contact_sheet(chosen, all_boxes)
        _save_png(np.asarray(sheet), self.root / "contact_sheet.png")
        return {"root": str(self.root), "samples": len(names),
                "rejected": len(_stems(self._dir("sidecars", True), ".json")),
                "boxes": len(coco["annotations"]), "per_class": per_class,
                "contact_sheet_rows": len(chosen), "removed": removed}

    def _contact_sheet(self, names: list[str], boxes: dict[str, list[Box]]) -> Image.Image:
        """Grid with one row per name: clean | mask | result (red boxes), titles on top."""
        sheet = Image.new("RGB", contact_sheet_size(len(names)), _BG)
        draw = ImageDraw.Draw(sheet)
        font = ImageFont.load_default()
        for col, title in enumerate(COLUMNS):
            x = GAP + col * (CELL + GAP) + (CELL - draw.textlength(title, font=font)) / 2
            draw.text((x, 6), title, fill=(255, 255, 255), font=font)
        for row, name in enumerate(names):
            files = self._files(name, rejected=False)
            clean = _read_rgb(files["clean"]) if files["clean"].is_file() else None
            strip = _sheet_row(_read_rgb(files["images"]), _read_mask(files["masks"]), clean, boxes[name],
                               name, font)
            sheet.paste(strip, (GAP, TITLE_H + row * (CELL + GAP)))
        return sheet


# ----------------------------------------------------------------------------- reader


def load_yolo_dataset(root: str | os.PathLike) -> list[tuple[str, list[Box], list[int]]]:
    """``(name, boxes_xyxy, class_ids)`` for every complete sample under ``root``, sorted by name.

    Image sizes come from the PNG headers; a missing label file raises DataError naming it.
    """
    root = Path(root)
    out = []
    for name in sorted(_stems(root / "sidecars", ".json")):
        image, label = root / "images" / f"{name}.png", root / "labels" / f"{name}.txt"
        try:
            with Image.open(image) as im:
                width, height = im.size
            lines = label.read_text().splitlines()
        except OSError as e:
            raise DataError(f"sample {name} in {root}: {e}") from e
        try:
            boxes, class_ids = yolo_to_boxes(lines, width, height)
        except ValueError as e:
            raise DataError(f"{label}: {e}") from e
        out.append((name, boxes, class_ids))
    return out
