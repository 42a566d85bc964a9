"""Side-by-side generator sheet and per-generator Fréchet distance/KID/IC-LPIPS (defectfill.benchmark.gallery)."""

import logging
import math

import numpy as np
import pytest
from PIL import Image

from defectfill.benchmark.gallery import GAP, TITLE_H, generation_metrics, sheet_size, side_by_side_sheet
from defectfill.data.datasets import load_reference_dataset
from defectfill.generation.samples import Sample, SampleWriter

H, W = 64, 256
CELL = 80
NAMES = [f"{i:06d}" for i in range(5)]


def rect_mask(i: int, shift: int = 0) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    x0 = 30 + 40 * i + shift
    mask[20:36, x0:x0 + 24] = True
    return mask


def clean_image(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(90, 130, (H, W), dtype=np.uint8)


def write_generator(root, fill: int, names=NAMES, shifted: tuple[str, ...] = (), sidecar=None) -> SampleWriter:
    """A fake generated dataset: same clean images and masks per name, defect pixels set to ``fill``."""
    writer = SampleWriter(root, ["hole"])
    for name in names:
        i = int(name)
        mask = rect_mask(i, shift=7 if name in shifted else 0)
        clean = clean_image(i)
        image = clean.copy()
        image[mask] = fill
        writer.write(Sample(name=name, image=image, mask=mask, defect_class="hole", clean=clean,
                            sidecar=dict(sidecar or {})))
    return writer


def cell_box(row: int, col: int) -> tuple[int, int, int, int]:
    x, y = GAP + col * (CELL + GAP), TITLE_H + row * (CELL + GAP)
    return x, y, x + CELL, y + CELL


@pytest.fixture
def generated(tmp_path):
    roots = {"copy_paste": tmp_path / "cp", "dgt": tmp_path / "dgt", "defectfill": tmp_path / "df"}
    for fill, root in zip((20, 240, 150), roots.values()):
        write_generator(root, fill)
    return roots


def test_sheet_layout_and_columns_differ_where_content_differs(generated, tmp_path):
    out = side_by_side_sheet(generated, tmp_path / "sheet.png", max_rows=6, cell=CELL)
    assert out == tmp_path / "sheet.png" and out.is_file()
    assert not list(tmp_path.glob("*.tmp-*"))
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # 3 fixed columns (clean, mask, real reference) + 3 generators, 5 common rows
    expected = (6 * CELL + 7 * GAP, TITLE_H + 5 * (CELL + GAP) + GAP)
    assert sheet_size(3, 5, CELL) == expected
    assert (sheet.shape[1], sheet.shape[0]) == expected
    for row in range(5):
        cells = {}
        for col in range(6):
            x0, y0, x1, y1 = cell_box(row, col)
            cells[col] = sheet[y0:y1, x0:x1]
        # no reference recorded in these sidecars: a flat grey cell (but for its text)
        assert np.median(cells[2]) == 128
        # the generator columns differ pairwise (their defect fills differ) ...
        for a, b in ((3, 4), (3, 5), (4, 5)):
            assert np.abs(cells[a] - cells[b]).mean() > 5
        # ... and equal the clean crop away from the defect (same window in every column)
        far = (slice(CELL - 6, CELL - 2), slice(2, 6))  # bottom-left corner, outside the defect box
        for col in (3, 4, 5):
            assert np.abs(cells[col][far] - cells[0][far]).max() <= 2
        # the mask column is the crop of the mask: some white, some black
        grey = cells[1].mean(axis=2)
        assert (grey > 200).any() and (grey < 50).any()
    # a red outline marks the defect box on generator columns only
    x0, y0, x1, y1 = cell_box(0, 3)
    red = (sheet[y0:y1, x0:x1, 0] > 200) & (sheet[y0:y1, x0:x1, 1] < 60) & (sheet[y0:y1, x0:x1, 2] < 60)
    assert red.any()


def test_sheet_rows_common_accepted_names_and_max_rows(tmp_path):
    write_generator(tmp_path / "a", 20)
    write_generator(tmp_path / "b", 240, names=NAMES[1:])  # 000000 missing in b
    (tmp_path / "a" / "sidecars" / f"{NAMES[4]}.json").unlink()  # 000004 not accepted in a
    datasets = {"a": tmp_path / "a", "b": tmp_path / "b"}
    out = side_by_side_sheet(datasets, tmp_path / "s.png", max_rows=6, cell=CELL)
    size = Image.open(out).size
    assert size == sheet_size(2, 3, CELL)  # 000001..000003
    out = side_by_side_sheet(datasets, tmp_path / "s2.png", max_rows=2, cell=CELL)
    assert Image.open(out).size == sheet_size(2, 2, CELL)


def test_sheet_drops_row_whose_mask_differs(tmp_path, caplog):
    write_generator(tmp_path / "a", 20)
    write_generator(tmp_path / "b", 240, shifted=(NAMES[2],))
    with caplog.at_level(logging.WARNING, logger="defectfill.benchmark.gallery"):
        out = side_by_side_sheet({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "s.png", cell=CELL)
    assert Image.open(out).size == sheet_size(2, 4, CELL)
    assert any(NAMES[2] in r.getMessage() and "mask differs" in r.getMessage() for r in caplog.records)


def test_sheet_none_without_common_name(tmp_path):
    write_generator(tmp_path / "a", 20, names=NAMES[:2])
    write_generator(tmp_path / "b", 240, names=NAMES[2:])
    out_path = tmp_path / "s.png"
    assert side_by_side_sheet({"a": tmp_path / "a", "b": tmp_path / "b"}, out_path, cell=CELL) is None
    assert not out_path.exists()
    assert side_by_side_sheet({"a": tmp_path / "a", "missing": tmp_path / "nope"}, out_path) is None
    assert not out_path.exists()
    with pytest.raises(ValueError):
        side_by_side_sheet({}, out_path)


def test_sheet_handles_rgb_line_scan_without_clean(tmp_path):
    writer = SampleWriter(tmp_path / "rgb", ["hole"])
    mask = np.zeros((256, 4096), dtype=bool)
    mask[100:110, 3000:3040] = True
    image = np.zeros((256, 4096, 3), dtype=np.uint8)
    image[..., 1] = 120
    writer.write(Sample(name="000000", image=image, mask=mask, defect_class="hole"))
    out = side_by_side_sheet({"rgb": tmp_path / "rgb"}, tmp_path / "s.png", cell=CELL)
    assert Image.open(out).size == sheet_size(1, 1, CELL)


# ----------------------------------------------------------------------------- metrics


@pytest.fixture
def small_reference(woven_root):
    """The shared procedural reference set (6 defects, 128x512; conftest)."""
    return woven_root


def write_from_reference(root, reference, transform=lambda a, k: a, limit=None, copies=1):
    """A generated set made of the reference defects (``copies`` variants each, ``transform(image, k)``)."""
    ds = load_reference_dataset(reference)
    writer = SampleWriter(root, sorted({s.defect_type for s in ds.samples}))
    for i, s in enumerate(ds.samples[:limit]):
        for k in range(copies):
            writer.write(Sample(name=f"{i:04d}_{k}", image=transform(s.image, k), mask=s.mask,
                                defect_class=s.defect_type))
    return root


def test_generation_metrics_default_to_the_pretrained_backbone_and_say_so(small_reference, tmp_path):
    from defectfill.backbones import PRETRAINED_NAME

    same = write_from_reference(tmp_path / "same", small_reference)
    other = write_from_reference(tmp_path / "other", small_reference, copies=2,
                                 transform=lambda a, k: (a // (k + 2)).astype(np.uint8))
    m = generation_metrics(same, small_reference, crop=32)
    assert m["skipped"] is None
    assert (m["n_generated"], m["n_real"], m["crop"]) == (6, 6, 32)
    assert not any("fid" in key for key in m)  # not the FID network: never keyed FID ...
    assert m["frechet_name"] == "Fréchet distance (EfficientNet-Lite0 features)"  # ... nor called FID
    assert m["kid_name"] == "KID (EfficientNet-Lite0 features)"
    assert abs(m["frechet_distance"]) < 1e-3
    assert math.isfinite(m["kid_mean"]) and math.isfinite(m["kid_std"])
    assert m["standard"] is False and m["extractor"].startswith(PRETRAINED_NAME) and "RANDOM" not in m["extractor"]
    assert m["lpips"].startswith("lpips-lite0") and PRETRAINED_NAME in m["lpips"] and "RANDOM" not in m["lpips"]
    assert m["ic_lpips_detail"]["lpips"] == m["lpips"]
    # every generated crop is its own real crop's only cluster member: no cluster of 2, no value
    assert m["ic_lpips"] is None and m["ic_lpips_detail"]["clusters_used"] == 0
    d = generation_metrics(other, small_reference, crop=32)
    assert math.isfinite(d["frechet_distance"]) and d["frechet_distance"] > m["frechet_distance"] + 1e-3
    assert math.isfinite(d["kid_mean"]) and d["kid_subset_size"] == 6 and d["n_generated"] == 12
    assert d["ic_lpips"] is not None and math.isfinite(d["ic_lpips"]) and d["ic_lpips"] > 0
    assert d["ic_lpips_detail"]["clusters_used"] >= 1


def test_generation_metrics_random_networks_only_when_asked(small_reference, tmp_path):
    other = write_from_reference(tmp_path / "other", small_reference, copies=2,
                                 transform=lambda a, k: (a // (k + 2)).astype(np.uint8))
    r = generation_metrics(other, small_reference, crop=32, features="random", perceptual="lpips")
    assert "RANDOM" in r["extractor"] and r["frechet_name"] == "Fréchet distance (seed-0 RANDOM conv features)"
    assert "RANDOM" in r["lpips"] and r["lpips"].startswith("lpips-alex")
    assert math.isfinite(r["frechet_distance"]) and r["ic_lpips"] is not None
    with pytest.raises(ValueError, match="lpips_weights"):  # AlexNet weights would go unused by the default
        generation_metrics(other, small_reference, crop=32, lpips_weights="alexnet.pth")
    with pytest.raises(ValueError, match="perceptual must be one of"):
        generation_metrics(other, small_reference, crop=32, perceptual="l1")


def test_generation_metrics_skips_with_one_sample(small_reference, tmp_path):
    one = write_from_reference(tmp_path / "one", small_reference, limit=1)
    m = generation_metrics(one, small_reference, crop=32)
    assert m["n_generated"] == 1 and m["n_real"] == 6
    assert m["frechet_distance"] is None and m["kid_mean"] is None and m["ic_lpips"] is None
    assert m["frechet_name"] is None and m["extractor"] is None
    assert isinstance(m["skipped"], str) and "2" in m["skipped"]


def test_sheet_shows_the_real_defect_whose_mask_a_sample_reuses(tmp_path):
    """The sidecar's placement.reference_id in generator_config.reference_dir: that real image, cropped
    around its own mask (a dark 6 px blot on a light field here), in the third column."""
    ref = tmp_path / "ref"
    for sub in ("images", "masks"):
        (ref / sub).mkdir(parents=True)
    image = np.full((H, W), 220, np.uint8)
    mask = np.zeros((H, W), np.uint8)
    image[30:36, 200:206], mask[30:36, 200:206] = 10, 255
    Image.fromarray(image).save(ref / "images" / "r7.png")
    Image.fromarray(mask).save(ref / "masks" / "r7.png")
    (ref / "manifest.csv").write_text("id,defect_type\nr7,knot\n")
    side = {"placement": {"reference_id": "r7"}, "generator_config": {"reference_dir": str(ref)}}
    write_generator(tmp_path / "a", 20, names=NAMES[:1], sidecar=side)
    sheet = np.asarray(Image.open(side_by_side_sheet({"a": tmp_path / "a"}, tmp_path / "s.png", cell=CELL)))
    x0, y0, x1, y1 = cell_box(0, 2)
    real = sheet[y0:y1, x0:x1].astype(int)
    # 64 px window around the 6x6 blot, zoomed 80 // 64 = 1: exactly its 36 dark pixels above the label strip
    assert (real[:CELL - 15].max(axis=2) < 40).sum() == 36
    assert (real[20:60, 20:60] > 200).mean() > 0.5  # the light field around it, not a grey blank

    side["placement"]["reference_id"] = "missing"
    write_generator(tmp_path / "b", 20, names=NAMES[:1], sidecar=side)
    sheet = np.asarray(Image.open(side_by_side_sheet({"b": tmp_path / "b"}, tmp_path / "t.png", cell=CELL)))
    assert np.median(sheet[y0:y1, x0:x1]) == 128  # unreadable reference: grey, the sheet still written
