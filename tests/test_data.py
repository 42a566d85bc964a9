"""Tests for defectfill.data: loader validation, masks, crops, sampler, procedural data."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectfill.data import (
    DefectCropSampler,
    binarize_mask,
    load_reference_dataset,
    make_woven_dataset,
    mask_to_boxes,
    random_box_mask,
    random_box_masks,
    sample_defect_crop,
)
from defectfill.errors import DataError


def _gray(h=8, w=12):
    return (np.arange(h * w).reshape(h, w) * 2 % 256).astype(np.uint8)


def _spot_mask(h=8, w=12, pixels=((2, 3), (5, 7))):
    m = np.zeros((h, w), np.uint8)
    for y, x in pixels:
        m[y, x] = 255
    return m


def _write(root: Path, pairs: dict, manifest: dict | None = None) -> Path:
    """Write {id: (image, mask)} as PNGs (either may be None) and an optional id->type manifest."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for sid, (image, mask) in pairs.items():
        if image is not None:
            Image.fromarray(image).save(root / "images" / f"{sid}.png")
        if mask is not None:
            Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
    if manifest is not None:
        with (root / "manifest.csv").open("w", newline="") as f:
            rows = [("id", "defect_type", "extra")] + [(k, v, "x") for k, v in manifest.items()]
            csv.writer(f).writerows(rows)
    return root


# ---------------------------------------------------------------- loader


def test_load_grayscale_pair(tmp_path):
    image, mask = _gray(), _spot_mask()
    ds = load_reference_dataset(_write(tmp_path, {"a": (image, mask)}))
    assert len(ds) == 1 and ds.grayscale and ds.good_paths == [] and ds.defect_types == ["defect"]
    s = ds.samples[0]
    assert s.id == "a" and s.image.dtype == np.uint8 and s.image.shape == (8, 12, 3)
    for c in range(3):
        np.testing.assert_array_equal(s.image[..., c], image)
    assert s.mask.dtype == bool
    assert sorted(zip(*np.nonzero(s.mask))) == [(2, 3), (5, 7)]
    assert s.image_path == tmp_path / "images" / "a.png" and s.mask_path == tmp_path / "masks" / "a.png"


def test_manifest_types_filter_order_and_color(tmp_path):
    rgb = np.stack([_gray(), _gray() // 2, _gray() // 3], -1)
    pairs = {"c": (_gray(), _spot_mask()), "a": (rgb, _spot_mask()), "b": (_gray(), _spot_mask())}
    root = _write(tmp_path, pairs, {"a": "hole", "b": "stain", "c": "hole"})
    (root / "good").mkdir()
    Image.fromarray(_gray()).save(root / "good" / "g1.jpg")
    Image.fromarray(_gray()).save(root / "good" / "g0.png")

    ds = load_reference_dataset(root)
    assert [s.id for s in ds.samples] == ["a", "b", "c"]
    assert not ds.grayscale and ds.defect_types == ["hole", "stain"]
    assert [p.name for p in ds.good_paths] == ["g0.png", "g1.jpg"]
    np.testing.assert_array_equal(ds.samples[0].image, rgb)
    assert [s.id for s in load_reference_dataset(root, defect_types=["hole"]).samples] == ["a", "c"]
    assert [s.id for s in load_reference_dataset(root, max_samples=2).samples] == ["a", "b"]
    with pytest.raises(DataError, match="select no samples"):
        load_reference_dataset(root, defect_types=["crease"])
    with (root / "manifest.csv").open("a") as f:  # a row whose image is in neither images/ nor good/
        f.write("z,unused\n")
    with pytest.raises(DataError, match=r"manifest.csv: 1 row\(s\) name no image in images/ or good/: z "):
        load_reference_dataset(root)


def test_other_image_extensions(tmp_path):
    root = _write(tmp_path, {})
    Image.fromarray(_gray()).save(root / "images" / "a.bmp")
    Image.fromarray(_spot_mask()).save(root / "masks" / "a.tif")
    ds = load_reference_dataset(root)
    assert ds.samples[0].mask.sum() == 2


def _garbage(root):
    (root / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")


def _truncate(root):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(root / "masks" / "a.png")
    path = root / "masks" / "a.png"
    path.write_bytes(path.read_bytes()[:2000])  # cut inside the pixel data


def _manifest_missing_column(root):
    (root / "manifest.csv").write_text("id,type\na,hole\n")


TWO = {"a": (_gray(), _spot_mask()), "b": (_gray(), _spot_mask())}
BAD_CASES = {  # name: (pairs, manifest dict or fix-up function, file named in message, detail)
    "size_mismatch": ({"a": (_gray(8, 12), _spot_mask(8, 10, ((1, 1),)))}, None, "a.png", "12x8"),
    "empty_mask": ({"a": (_gray(), np.full((8, 12), 127, np.uint8))}, None, "a.png", "128"),
    "missing_mask": ({"a": (_gray(), _spot_mask()), "b": (_gray(), None)}, None, "b.png", "masks"),
    "mask_without_image": ({"a": (_gray(), _spot_mask()), "b": (None, _spot_mask())}, None, "b.png", "image"),
    "garbage_png": ({"a": (_gray(), _spot_mask())}, _garbage, "a.png", "cannot read"),
    "truncated_png": ({"a": (_gray(64, 64), _spot_mask())}, _truncate, "a.png", "cannot read"),
    "manifest_missing_id": (TWO, {"a": "hole"}, "manifest.csv", "'b'"),
    "manifest_missing_column": (TWO, _manifest_missing_column, "manifest.csv", "defect_type"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_raise_one_line(tmp_path, case):
    pairs, extra, name, detail = BAD_CASES[case]
    root = _write(tmp_path, pairs, extra if isinstance(extra, dict) else None)
    if callable(extra):
        extra(root)
    with pytest.raises(DataError) as info:
        load_reference_dataset(root)
    msg = str(info.value)
    assert name in msg and detail in msg and "\n" not in msg


def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match="nope"):
        load_reference_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_reference_dataset(tmp_path / "file")
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="images"):
        load_reference_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_reference_dataset(tmp_path)


def test_soft_mask_threshold(tmp_path):
    mask = np.zeros((8, 12), np.uint8)
    mask[1, 1], mask[2, 2], mask[3, 3] = 127, 128, 200
    root = _write(tmp_path, {"a": (_gray(), mask)})
    assert sorted(zip(*np.nonzero(load_reference_dataset(root).samples[0].mask))) == [(2, 2), (3, 3)]
    strict = load_reference_dataset(root, mask_threshold=200).samples[0].mask
    assert sorted(zip(*np.nonzero(strict))) == [(3, 3)]


def test_binarize_mask_modes():
    la = np.array([[[255, 128], [255, 127], [128, 255], [127, 255]]], np.uint8)  # v = L*A/255
    np.testing.assert_array_equal(binarize_mask(la), [[True, False, True, False]])
    np.testing.assert_array_equal(binarize_mask(Image.fromarray(la, "LA")), [[True, False, True, False]])
    rgb = np.array([[[128, 128, 128], [127, 127, 127], [255, 0, 0]]], np.uint8)  # red luminance 76
    np.testing.assert_array_equal(binarize_mask(Image.fromarray(rgb)), [[True, False, False]])
    np.testing.assert_array_equal(binarize_mask(rgb, threshold=70), [[True, True, True]])


# ---------------------------------------------------------------- masks


def test_mask_to_boxes_hand_drawn():
    rows = [
        "##......#.",
        "##.......#",
        "..#.......",
        "..........",
        ".....#....",
        "###.......",
        "#.#......#",
    ]
    mask = np.array([[c == "#" for c in r] for r in rows])
    # Diagonal chains merge (8-connectivity); the right-border pair and the bottom-left U touch borders.
    expected = [(0, 0, 3, 3), (8, 0, 10, 2), (5, 4, 6, 5), (0, 5, 3, 7), (9, 6, 10, 7)]
    assert mask_to_boxes(mask) == expected
    assert mask_to_boxes(mask, min_area=2) == [(0, 0, 3, 3), (8, 0, 10, 2), (0, 5, 3, 7)]
    assert mask_to_boxes(np.zeros((4, 4), bool)) == []


def test_random_box_mask_bounds():
    for seed in range(200):
        rng = np.random.default_rng(seed)
        m = random_box_mask(200, 300, num_boxes=1, min_frac=0.1, max_frac=0.3, rng=rng)
        [(x0, y0, x1, y1)] = mask_to_boxes(m)
        assert 20 <= y1 - y0 <= 60 and 30 <= x1 - x0 <= 90
        assert m.sum() == (y1 - y0) * (x1 - x0)  # one filled rectangle, fully inside
    tiny = random_box_mask(10, 10, num_boxes=5, min_frac=0.01, max_frac=0.01, rng=np.random.default_rng(0))
    assert 1 <= tiny.sum() <= 5
    big = random_box_masks(3, 32, 48, rng=np.random.default_rng(0))
    assert big.shape == (3, 1, 32, 48) and big.dtype == torch.float32
    assert set(big.unique().tolist()) <= {0.0, 1.0}
    again = random_box_masks(3, 32, 48, rng=np.random.default_rng(0))
    assert torch.equal(big, again)


# ---------------------------------------------------------------- crops


@pytest.mark.parametrize("point", [(0, 0), (255, 4095), (0, 4095), (255, 0), (100, 2000)])
def test_crop_keeps_single_pixel_defect(point):
    image = np.zeros((256, 4096, 3), np.uint8)
    mask = np.zeros((256, 4096), bool)
    image[point], mask[point] = 255, True
    for seed in range(10):
        img, m = sample_defect_crop(image, mask, 256, 64, np.random.default_rng(seed))
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert m.shape == (64, 64) and m.dtype == bool and m.sum() == 1
        # Without resizing the crop is exact: the defect pixel is the bright one.
        img, m = sample_defect_crop(image, mask, 128, 128, np.random.default_rng(seed))
        assert m.sum() == 1 and (img[m] == 255).all() and img.sum() == 255 * 3


def test_crop_thin_line_survives_downscale_and_padding():
    image = np.full((40, 50, 3), 90, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 25] = True  # 1-px wide vertical line
    for seed in range(10):
        img, m = sample_defect_crop(image, mask, 64, 16, np.random.default_rng(seed))  # pads both axes
        assert img.shape == (16, 16, 3) and m.shape == (16, 16) and m.any()
        img, m = sample_defect_crop(image, mask, 32, 8, np.random.default_rng(seed))
        assert m.any() and m.shape == (8, 8)


def test_crop_upscale():
    image = np.zeros((256, 1000, 3), np.uint8)
    mask = np.zeros((256, 1000), bool)
    mask[250:256, 990:1000] = True
    img, m = sample_defect_crop(image, mask, 128, 512, np.random.default_rng(3))
    assert img.shape == (512, 512, 3) and m.any()


# ---------------------------------------------------------------- sampler


def test_sampler_deterministic_and_stateless(woven_root):
    ds = load_reference_dataset(woven_root)
    sampler = DefectCropSampler(ds, crop_size=96, resolution=32, seed=7)
    b = sampler.batch(step=3, process_index=0, batch_size=4)
    assert b["pixel_values"].shape == (4, 3, 32, 32) and b["pixel_values"].dtype == torch.float32
    assert b["masks"].shape == (4, 1, 32, 32) and b["masks"].dtype == torch.float32
    assert b["pixel_values"].min() >= -1 and b["pixel_values"].max() <= 1
    assert set(b["masks"].unique().tolist()) <= {0.0, 1.0} and (b["masks"].sum((1, 2, 3)) > 0).all()
    assert len(b["ids"]) == 4 and set(b["ids"]) <= {s.id for s in ds.samples}

    sampler.batch(step=99, process_index=1, batch_size=4)  # no hidden state
    fresh = DefectCropSampler(ds, crop_size=96, resolution=32, seed=7)
    for other in (sampler.batch(3, 0, 4), fresh.batch(3, 0, 4)):
        assert torch.equal(b["pixel_values"], other["pixel_values"])
        assert torch.equal(b["masks"], other["masks"])
        assert b["ids"] == other["ids"]
    reseeded = DefectCropSampler(ds, 96, 32, seed=8)
    for other in (sampler.batch(4, 0, 4), sampler.batch(3, 1, 4), reseeded.batch(3, 0, 4)):
        assert not torch.equal(b["pixel_values"], other["pixel_values"])


# ---------------------------------------------------------------- procedural data


def test_procedural_dataset_loads_and_matches_manifest(woven_root):
    ds = load_reference_dataset(woven_root)
    assert len(ds) == 6 and ds.grayscale and len(ds.good_paths) == 4 and len(ds.defect_types) >= 3
    assert (woven_root / "README.txt").read_text().lower().count("procedural")
    with (woven_root / "manifest.csv").open() as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 10
    for s in ds.samples:
        assert s.image.shape == (128, 512, 3) and s.mask.any()
        assert int(rows[s.id]["defect_pixels"]) == s.mask.sum() and rows[s.id]["kind"] == "defect"
        assert set(np.unique(np.asarray(Image.open(s.mask_path)))) <= {0, 255}
    assert {r["kind"] for r in rows.values()} == {"defect", "good"}


def test_procedural_deterministic_by_seed(tmp_path, woven_root):
    same = make_woven_dataset(tmp_path / "same", height=128, width=512, seed=0)
    other = make_woven_dataset(tmp_path / "other", height=128, width=512, seed=1)
    names = sorted(p.relative_to(woven_root) for p in woven_root.rglob("*.png"))
    assert names == sorted(p.relative_to(same) for p in same.rglob("*.png"))
    for name in names:
        a, b = (np.asarray(Image.open(root / name)) for root in (woven_root, same))
        np.testing.assert_array_equal(a, b)
    assert (woven_root / "manifest.csv").read_text() == (same / "manifest.csv").read_text()
    assert not np.array_equal(
        np.asarray(Image.open(woven_root / names[0])), np.asarray(Image.open(other / names[0]))
    )


# ---------------------------------------------------------------- real data


def test_real_aitex(aitex_root):
    ds = load_reference_dataset(aitex_root)
    assert len(ds) == 72 and ds.grayscale and len(ds.good_paths) == 49
    assert all(s.mask.any() for s in ds.samples)
    assert all(s.image.shape[0] == 256 and s.image.shape[2] == 3 for s in ds.samples)
    assert "fuzzyball" in ds.defect_types
    img, m = sample_defect_crop(ds.samples[0].image, ds.samples[0].mask, 256, 128, np.random.default_rng(0))
    assert img.shape == (128, 128, 3) and m.any()


@pytest.mark.parametrize("seed,height,width", [(0, 64, 256), (1, 128, 256), (2, 128, 512), (5, 128, 512)])
def test_woven_dataset_for_sizes_whose_thread_widths_fall_short(tmp_path, seed, height, width):
    root = make_woven_dataset(tmp_path / "d", height=height, width=width, seed=seed)
    with Image.open(next((root / "images").iterdir())) as im:
        assert im.size == (width, height)
