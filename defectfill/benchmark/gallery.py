"""Side-by-side comparison of generators and per-generator Fréchet distance / KID / IC-LPIPS.

Generators run with the same seed on the same clean images write the same sample names with
the same masks (``defectfill.generation.samples`` layout), so one name is one like-for-like comparison:

* :func:`side_by_side_sheet` — a PNG contact sheet, one row per common sample name,
  columns ``clean | mask | real reference | <generator 1> | <generator 2> | ...``, all but the
  real reference (the real defect whose mask the sample reuses, around its own mask) cropped to the
  SAME window around the mask's first connected component.
* :func:`generation_metrics` — Fréchet distance / KID (:func:`defectfill.metrics.frechet_kid`)
  and masked IC-LPIPS (:func:`defectfill.metrics.ic_lpips`) of one generated dataset's
  defect-centred crops against the real reference crops, by default all on the pretrained
  EfficientNet-Lite0 backbone; the result names the metrics ("FID" only for the standard
  TF-FID Inception) and the networks, so a random network (only when asked for) is never
  mistaken for the standard metrics.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from defectfill.data.datasets import load_reference_dataset, load_reference_sample
from defectfill.data.masks import mask_to_boxes
from defectfill.downstream.tiles import images_from_synthetic
from defectfill.errors import DataError
from defectfill.generation.samples import _read_mask, _read_rgb, native_window, outline_boxes, spread_indices, zoom_cell
from defectfill.metrics import frechet_kid, ic_lpips, load_dataset_crops, load_features, load_reference_crops
from defectfill.metrics.distances import PERCEPTUAL_MEASURES, load_perceptual
from defectfill.metrics.distribution import MAX_KID_SUBSET, boundary_crops
from defectfill.runinfo import atomic_save_image

log = logging.getLogger(__name__)

GAP = 4  # spacing between cells and around the sheet (px)
TITLE_H = 24  # column-title bar height (px)
FIXED_COLUMNS = ("clean", "mask", "real reference")  # before one column per generator
_BG = (32, 32, 32)
_PAD = (64, 64, 64)
_NO_CLEAN = (128, 128, 128)
_RED = (255, 0, 0)

Box = tuple[int, int, int, int]


# ----------------------------------------------------------------------------- contact sheet


def sheet_size(n_generators: int, rows: int, cell: int = 160) -> tuple[int, int]:
    """(width, height) of a :func:`side_by_side_sheet` with ``n_generators`` columns after the fixed ones.

    ``width = n_cols * cell + (n_cols + 1) * GAP`` and ``height = TITLE_H + rows * (cell + GAP) + GAP``.
    """
    n_cols = len(FIXED_COLUMNS) + int(n_generators)
    return n_cols * cell + (n_cols + 1) * GAP, TITLE_H + int(rows) * (cell + GAP) + GAP


def _accepted(root: Path) -> set[str]:
    """Names with a sidecar (complete, accepted samples) under ``root``; empty when there is none."""
    folder = root / "sidecars"
    if not folder.is_dir():
        return set()
    return {p.name[: -len(".json")] for p in folder.iterdir()
            if p.is_file() and p.name.endswith(".json") and ".tmp" not in p.name}


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: float, font) -> str:
    """``text`` shortened with '..' until it is at most ``width`` px wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def _requested_mask(root: Path, name: str) -> np.ndarray:
    """The mask the generator was asked to fill (the sidecar's ``requested_mask_rle``; the exported
    label is only its visibly changed part), else ``masks/<name>.png`` for older datasets."""
    import json

    from pycocotools import mask as mask_util

    try:
        rle = json.loads((root / "sidecars" / f"{name}.json").read_text()).get("requested_mask_rle")
    except (OSError, ValueError):
        rle = None
    return mask_util.decode(rle).astype(bool) if rle else _read_mask(root / "masks" / f"{name}.png")


def _reference(name: str, roots: dict[str, Path]):
    """The real defect whose mask ``name`` reuses (the sidecar's ``placement.reference_id`` in its
    ``generator_config.reference_dir``) as a ReferenceSample, or why there is none to show."""
    import json

    for root in roots.values():
        try:
            side = json.loads((root / "sidecars" / f"{name}.json").read_text())
        except (OSError, ValueError):
            continue
        ref_id = (side.get("placement") or {}).get("reference_id")
        ref_dir = (side.get("generator_config") or {}).get("reference_dir")
        if ref_id and ref_dir:
            try:
                return load_reference_sample(ref_dir, ref_id)
            except DataError as exc:
                return f"{ref_id} unreadable: {exc}"
    return "no reference recorded"


def _blank(cell: int, text: str, font) -> Image.Image:
    im = Image.new("RGB", (cell, cell), _NO_CLEAN)
    ImageDraw.Draw(im).text((6, cell // 2 - 6), text, fill=(230, 230, 230), font=font)
    return im


def _reference_cell(reference, cell: int, font) -> Image.Image:
    """The real reference defect at native resolution around its own first component, boxed, with its
    type and id; a grey cell saying why when there is none."""
    if isinstance(reference, str):
        return _blank(cell, reference[:24], font)
    mask = reference.mask
    h, w = mask.shape
    boxes = mask_to_boxes(mask)
    window, zoom = native_window(boxes[0] if boxes else None, w, h, cell)
    x0, y0, x1, y1 = window
    out = Image.new("RGB", (cell, cell), _PAD)
    im, ox, oy = zoom_cell(reference.image[y0:y1, x0:x1], zoom, cell)
    outline_boxes(im, boxes, window, zoom)
    out.paste(im, (ox, oy))
    draw = ImageDraw.Draw(out)
    label = _fit_text(draw, f"{reference.defect_type} {reference.id}", cell - 6, font)
    draw.rectangle([0, cell - 14, draw.textlength(label, font=font) + 6, cell], fill=(0, 0, 0))
    draw.text((3, cell - 13), label, fill=(255, 255, 255), font=font)
    return out


def _row_inputs(name: str, roots: dict[str, Path]) -> tuple[np.ndarray, np.ndarray | None] | str:
    """(requested mask, clean) of ``name`` when identical across datasets, else the reason it is not
    like-for-like."""
    mask, mask_from = None, None
    clean, clean_from = None, None
    for label, root in roots.items():
        m = _requested_mask(root, name)
        if mask is None:
            mask, mask_from = m, label
        elif m.shape != mask.shape or not np.array_equal(m, mask):
            return f"mask differs between {mask_from!r} and {label!r}"
        path = root / "clean" / f"{name}.png"
        if path.is_file():
            c = _read_rgb(path)
            if clean is None:
                clean, clean_from = c, label
            elif c.shape != clean.shape or not np.array_equal(c, clean):
                return f"clean image differs between {clean_from!r} and {label!r}"
    if clean is not None and clean.shape[:2] != mask.shape:
        return f"clean image {clean.shape[1]}x{clean.shape[0]} does not match the mask"
    return mask, clean


def _row(name: str, roots: dict[str, Path], mask: np.ndarray, clean: np.ndarray | None,
         cell: int, font) -> Image.Image:
    """One sheet row: clean | mask | real reference | one generator per column; all but the reference
    (a different image: the real defect whose mask the sample reuses) cropped to the same window."""
    h, w = mask.shape
    boxes = mask_to_boxes(mask)
    window, zoom = native_window(boxes[0] if boxes else None, w, h, cell)
    x0, y0, x1, y1 = window
    n_cols = len(FIXED_COLUMNS) + len(roots)
    row = Image.new("RGB", (n_cols * cell + (n_cols - 1) * GAP, cell), _PAD)
    if clean is None:
        row.paste(_blank(cell, "no clean image", font), (0, 0))
    else:
        im, ox, oy = zoom_cell(clean[y0:y1, x0:x1], zoom, cell)
        row.paste(im, (ox, oy))
    im, ox, oy = zoom_cell((mask[y0:y1, x0:x1] * 255).astype(np.uint8), zoom, cell)
    row.paste(im, (cell + GAP + ox, oy))
    row.paste(_reference_cell(_reference(name, roots), cell, font), (2 * (cell + GAP), 0))
    for col, root in enumerate(roots.values(), start=len(FIXED_COLUMNS)):
        image = _read_rgb(root / "images" / f"{name}.png")
        if image.shape[:2] != mask.shape:
            row.paste(_blank(cell, "size mismatch", font), (col * (cell + GAP), 0))
            continue
        im, ox, oy = zoom_cell(image[y0:y1, x0:x1], zoom, cell)
        outline_boxes(im, boxes, window, zoom)
        row.paste(im, (col * (cell + GAP) + ox, oy))
    draw = ImageDraw.Draw(row)
    label = _fit_text(draw, name, cell - 6, font)
    draw.rectangle([0, 0, draw.textlength(label, font=font) + 6, 14], fill=(0, 0, 0))
    draw.text((3, 1), label, fill=(255, 255, 255), font=font)
    return row


def side_by_side_sheet(datasets: dict[str, str | os.PathLike], out_path: str | os.PathLike,
                       max_rows: int = 6, cell: int = 160) -> Path | None:
    """Write a PNG comparing generators on the SAME clean images and masks; return its path.

    ``datasets`` maps a column title (generator name) to its generated dataset folder
    (``defectfill.generation.samples`` layout). Rows are sample names accepted (``sidecars/<name>.json``)
    in EVERY dataset, sorted, at most ``max_rows`` of them evenly spread over the list
    (:func:`~defectfill.generation.samples.spread_indices`). Columns: ``clean | mask | real reference | <one per
    dataset, in dict order>``; the real reference is the real defect whose mask the sample reuses (type and
    id written on it; grey when the sidecars record none); every other cell of a row shows the same :func:`~defectfill.generation.samples.native_window`
    around the mask's first connected component at native resolution in a ``cell`` px square, with the
    mask's component boxes outlined in red on the generator columns. A row whose mask (or clean
    image) differs between datasets is not like-for-like: it is dropped with a logged warning.
    Layout: :func:`sheet_size`. Returns None and writes nothing when no row remains (no common
    name, or every chosen row dropped). The PNG is written atomically.
    """
    if not datasets:
        raise ValueError("datasets is empty: give at least one generated dataset folder")
    if int(max_rows) < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if int(cell) < 16:
        raise ValueError(f"cell must be >= 16 px, got {cell}")
    cell = int(cell)
    roots = {str(label): Path(root) for label, root in datasets.items()}
    common = None
    for label, root in roots.items():
        names = _accepted(root)
        if not names:
            log.warning("side-by-side sheet: %s (%s) has no accepted samples", label, root)
        common = names if common is None else common & names
    common = sorted(common)
    chosen = [common[i] for i in spread_indices(len(common), int(max_rows))]
    rows = []
    for name in chosen:
        inputs = _row_inputs(name, roots)
        if isinstance(inputs, str):
            log.warning("side-by-side sheet: skipping %s: %s (not a like-for-like comparison)", name, inputs)
            continue
        rows.append((name, *inputs))
    if not rows:
        log.warning("side-by-side sheet: no sample common to %s; nothing written", ", ".join(roots))
        return None

    font = ImageFont.load_default()
    sheet = Image.new("RGB", sheet_size(len(roots), len(rows), cell), _BG)
    draw = ImageDraw.Draw(sheet)
    for col, title in enumerate((*FIXED_COLUMNS, *roots)):
        title = _fit_text(draw, title, cell - 4, font)
        x = GAP + col * (cell + GAP) + (cell - draw.textlength(title, font=font)) / 2
        draw.text((x, 6), title, fill=(255, 255, 255), font=font)
    for i, (name, mask, clean) in enumerate(rows):
        sheet.paste(_row(name, roots, mask, clean, cell, font), (GAP, TITLE_H + i * (cell + GAP)))
    return atomic_save_image(sheet, out_path)


# ----------------------------------------------------------------------------- metrics


def generation_metrics(generated_dir: str | os.PathLike, reference_dir: str | os.PathLike, crop: int = 64,
                       features: str = "efficientnet-lite0", features_weights: str | None = None,
                       lpips_weights: str | None = None, seed: int = 0,
                       defect_types: Sequence[str] | None = None, device: str = "cpu",
                       max_pairs_per_cluster: int | None = None, perceptual: str = "lpips-lite0",
                       lpips_net: str = "alex") -> dict:
    """Fréchet distance / KID and masked IC-LPIPS of a generated dataset's defect crops against real ones.

    Generated crops: :func:`~defectfill.metrics.load_dataset_crops` (accepted samples, all
    classes); real crops: :func:`~defectfill.metrics.load_reference_crops` of ``reference_dir``
    (``images/`` + ``masks/``) limited to ``defect_types`` when given; both ``crop`` px square,
    centred on the defect. The Fréchet distance and KID use ``load_features(features,
    features_weights, seed=seed)`` (default: the pretrained EfficientNet-Lite0's pooled features;
    ``"fid-inception"`` with the TF-FID weights gives the standard FID/KID; ``"random"`` only when
    asked) with ``kid_subset_size = min(n_real, n_generated, 1000)``. IC-LPIPS (Ojha et al. 2021,
    over the union of the defect masks) uses ``load_perceptual(perceptual, lpips_net,
    lpips_weights)``: by default the LPIPS-style distance on the pretrained EfficientNet-Lite0;
    ``perceptual="lpips"`` for the lpips package's network (with ``lpips_weights``: the standard
    LPIPS; without: a RANDOM backbone, asked for explicitly).

    Returns ``{frechet_distance, kid_mean, kid_std, kid_subset_size, ic_lpips, frechet_name,
    kid_name, n_generated, n_real, crop, extractor, standard, lpips, ic_lpips_detail, skipped,
    generated_dir, reference_dir}``. ``frechet_name``/``kid_name`` are what the numbers are
    called ("FID"/"KID" only when ``standard``, else "Fréchet distance (EfficientNet-Lite0
    features)" ...); ``extractor``/``lpips`` name the networks. With fewer than 2 generated or 2
    real crops nothing is computed: the metric values (and network fields) are None and
    ``skipped`` says why. ``ic_lpips`` is None when no cluster has 2 members (see
    ``ic_lpips_detail``).
    """
    if perceptual not in PERCEPTUAL_MEASURES:
        raise ValueError(f"perceptual must be one of {', '.join(PERCEPTUAL_MEASURES)}, got {perceptual!r}")
    gen = load_dataset_crops(generated_dir, crop)
    real = load_reference_crops(reference_dir, crop, defect_types)
    out = {"frechet_distance": None, "kid_mean": None, "kid_std": None, "kid_subset_size": None,
           "ic_lpips": None, "frechet_name": None, "kid_name": None,
           "n_generated": len(gen), "n_real": len(real), "crop": int(crop), "extractor": None,
           "standard": None, "lpips": None, "ic_lpips_detail": None, "skipped": None,
           "generated_dir": str(generated_dir), "reference_dir": str(reference_dir)}
    if len(gen) < 2 or len(real) < 2:
        out["skipped"] = (f"need at least 2 generated and 2 real defect crops, got {len(gen)} generated "
                          f"and {len(real)} real")
        log.warning("generation metrics for %s skipped: %s", generated_dir, out["skipped"])
        return out

    model, description = load_perceptual(perceptual, lpips_net, lpips_weights, device=device)
    extractor = load_features(features, features_weights, device=device, seed=seed)
    dist = frechet_kid(real.images, gen.images, extractor,
                       kid_subset_size=min(len(real), len(gen), MAX_KID_SUBSET), seed=seed)
    detail = ic_lpips(gen.images, real.images, model, description, generated_masks=gen.masks,
                      real_masks=real.masks, max_pairs_per_cluster=max_pairs_per_cluster, seed=seed)
    value = detail["value"] if math.isfinite(detail["value"]) else None  # NaN is not JSON
    detail = {**detail, "value": value}
    out.update({key: dist[key] for key in ("frechet_distance", "kid_mean", "kid_std", "kid_subset_size",
                                           "extractor", "standard", "frechet_name", "kid_name")})
    out.update(lpips=description, ic_lpips_detail=detail, ic_lpips=value)
    return out


def boundary_realism(generated_dir: str | os.PathLike, reference_dir: str | os.PathLike, crop: int = 32,
                     per_image: int = 4, features: str = "efficientnet-lite0", features_weights: str | None = None,
                     seed: int = 0, device: str = "cpu") -> dict:
    """Realism where a defect meets the fabric: Fréchet distance and KID between crops centred on the
    mask boundary (:func:`defectfill.metrics.distribution.boundary_crops`, ``per_image`` per image,
    ``crop`` px at source scale) of the generated samples (accepted, exported masks) and of the real
    defects in ``reference_dir``, on the same features as :func:`generation_metrics` (pretrained
    EfficientNet-Lite0 by default). Lower is closer to real seams. Returns ``{boundary_frechet,
    boundary_kid, n_generated, n_real, crop, per_image, extractor, skipped}``."""
    def rgb(image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]

    gen = [c for im in images_from_synthetic(generated_dir, 1)
           for c in boundary_crops(rgb(im.image), im.mask, crop, per_image)]
    real = [c for s in load_reference_dataset(reference_dir).samples
            for c in boundary_crops(rgb(s.image), s.mask, crop, per_image)]
    out = {"boundary_frechet": None, "boundary_kid": None, "n_generated": len(gen), "n_real": len(real),
           "crop": int(crop), "per_image": int(per_image), "extractor": None, "skipped": None}
    if len(gen) < 2 or len(real) < 2:
        out["skipped"] = f"need at least 2 boundary crops on each side, got {len(gen)} generated and {len(real)} real"
        return out
    extractor = load_features(features, features_weights, device=device, seed=seed)
    dist = frechet_kid(np.stack(real), np.stack(gen), extractor,
                       kid_subset_size=min(len(real), len(gen), MAX_KID_SUBSET), seed=seed)
    out.update(boundary_frechet=dist["frechet_distance"], boundary_kid=dist["kid_mean"], extractor=dist["extractor"])
    return out
