"""Detection benchmark: tiled dataset builder, RT-DETR configs (pretrained EfficientNet-Lite0 backbone,
small ResNet), offline training/evaluation, reports, the learning-curve bench's helpers.

ultralytics runs only in subprocesses with a clean environment (YOLO_CONFIG_DIR in tmp_path, network
calls blocked and recorded), so this pytest process never imports it.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from netguard import SUBPROCESS_NO_NETWORK
from PIL import Image

from defectfill.cli import detect_main
from defectfill.data.masks import mask_components, mask_to_boxes
from defectfill.detect.dataset import (
    PAD_VALUE,
    box_fill_stats,
    build_detection_dataset,
    build_eval_dataset,
    centred_tile_origins,
    grow_box,
    split_by_source,
    split_component,
    tile_boxes,
    tile_origins,
)
from defectfill.detect.report import write_report
from defectfill.detect.rtdetr import (
    DEFAULT_MODEL,
    LITE0_MODEL,
    DetectorConfig,
    model_for_run,
    resolve_model,
    train_detector,
)
from defectfill.errors import ConfigError, DataError, ModelError
from defectfill.generation.samples import Sample, SampleWriter

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- hand-made reference set
# (image id, defect type, width, rectangles (x0, y0, x1, y1) painted into the mask)
DEFECTS = {
    "a": ("hole", 1024, [(100, 50, 110, 60), (250, 100, 262, 108), (300, 200, 500, 202)]),  # blob, border, line
    "b": ("line", 1000, [(750, 30, 755, 33), (900, 10, 903, 12)]),  # 1000 px: last tile at x0=744
    "c": ("hole", 512, [(300, 0, 304, 3)]),
    "d": ("hole", 512, []),  # diagonal, painted below
}
GOOD = {"g1": 512, "g2": 512}
# tile -> (class id in ["hole", "line"], boxes in tile pixels), written by hand from the rectangles above
EXPECTED = {
    "a_x0000_y000": (0, [(100, 50, 110, 60), (250, 100, 256, 108)]),
    "a_x0256_y000": (0, [(0, 100, 6, 108), (44, 200, 244, 202)]),
    "b_x0512_y000": (1, [(238, 30, 243, 33)]),
    "b_x0744_y000": (1, [(156, 10, 159, 12), (6, 30, 11, 33)]),
    "c_x0256_y000": (0, [(44, 0, 48, 3)]),
    "d_x0000_y000": (0, [(10, 0, 16, 6)]),
}
BACKGROUND = {"g1_x0000_y000", "g1_x0256_y000", "g2_x0000_y000", "g2_x0256_y000"}


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_reference(root: Path) -> Path:
    """Grey noise images with hand-painted masks, a manifest and two good images."""
    rows = ["id,defect_type"]
    for seed, (name, (dtype, width, rects)) in enumerate(DEFECTS.items()):
        mask = np.zeros((256, width), bool)
        for x0, y0, x1, y1 in rects:
            mask[y0:y1, x0:x1] = True
        if name == "d":
            for i in range(6):
                mask[i, 10 + i] = True  # corner-touching pixels: one 8-connected component
        _save(_noise(256, width, seed), root / "images" / f"{name}.png")
        _save(mask.astype(np.uint8) * 255, root / "masks" / f"{name}.png")
        rows.append(f"{name},{dtype}")
    for seed, (name, width) in enumerate(GOOD.items(), start=10):
        _save(_noise(256, width, seed), root / "good" / f"{name}.png")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def read_labels(path: Path, size=256):
    """(class ids, pixel boxes) of a YOLO label file, parsed here independently of the package."""
    classes, boxes = [], []
    for line in path.read_text().splitlines():
        c, xc, yc, w, h = line.split()
        xc, yc, w, h = (float(v) * size for v in (xc, yc, w, h))
        classes.append(int(c))
        boxes.append((round(xc - w / 2), round(yc - h / 2), round(xc + w / 2), round(yc + h / 2)))
    return classes, boxes


def tiles_in(out: Path, split: str) -> set[str]:
    return {p.stem for p in (out / split / "images").glob("*.png")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return make_reference(tmp_path_factory.mktemp("ref") / "ref")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A SampleWriter dataset: one 256x256, one 512x256 (re-tiled), one 128x128 (letterboxed) sample."""
    root = tmp_path_factory.mktemp("syn") / "syn"
    writer = SampleWriter(root, ["hole"], contact_sheet_samples=0)
    for name, (h, w, rect) in {"s256": (256, 256, (10, 30, 20, 40)), "wide": (256, 512, (300, 20, 310, 30)),
                               "small": (128, 128, (10, 30, 20, 40))}.items():
        mask = np.zeros((h, w), bool)
        x0, y0, x1, y1 = rect
        mask[y0:y1, x0:x1] = True
        writer.write(Sample(name, _noise(h, w, len(name)), mask, "hole"))
    writer.finalize()
    return root


# ----------------------------------------------------------------------------- dataset builder


def test_tiles_boxes_and_split_by_source(reference, tmp_path):
    out = tmp_path / "det"
    manifest = build_detection_dataset(reference, out, val_fraction=0.5, seed=0)
    train, val = tiles_in(out, "train"), tiles_in(out, "val")
    assert not train & val and train | val == set(EXPECTED) | BACKGROUND  # 6 labelled + 4 background tiles
    for name, (cls, boxes) in EXPECTED.items():
        split = "train" if name in train else "val"
        got_cls, got_boxes = read_labels(out / split / "labels" / f"{name}.txt")
        assert got_boxes == boxes and set(got_cls) == {cls}, name
    for name in BACKGROUND:
        split = "train" if name in train else "val"
        assert (out / split / "labels" / f"{name}.txt").read_text() == ""
    # pixels: a tile is the source crop (here the right-aligned last tile of the 1000 px image)
    split = "train" if "b_x0744_y000" in train else "val"
    tile = np.asarray(Image.open(out / split / "images" / "b_x0744_y000.png"))
    assert tile.shape == (256, 256) and (tile == _noise(256, 1000, 1)[:, 744:1000]).all()
    # split by source image: no id in both splits, each split has defects and backgrounds
    ids = {s: {n.split("_x")[0] for n in tiles_in(out, s)} for s in ("train", "val")}
    assert not ids["train"] & ids["val"] and ids["train"] | ids["val"] == set(DEFECTS) | set(GOOD)
    for s in ("train", "val"):
        assert ids[s] & set(DEFECTS) and ids[s] & set(GOOD)
        assert set(manifest["splits"][s]["source_ids"]) == ids[s]
    assert set(manifest["sources"]["reference_val"]) == ids["val"] & set(DEFECTS)
    counts = manifest["splits"]
    assert counts["train"]["images"] + counts["val"]["images"] == 10
    assert sum(counts[s]["per_class"]["hole"]["boxes"] for s in ("train", "val")) == 6
    assert sum(counts[s]["per_class"]["line"]["boxes"] for s in ("train", "val")) == 3
    assert manifest["dropped"]["tiles_without_defect"] == 2 + 2 + 1 + 1  # a: 2, b: 2, c: 1, d: 1
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {"path": str(out.resolve()), "train": "train/images", "val": "val/images",
                    "names": {0: "hole", 1: "line"}}
    again = build_detection_dataset(reference, out, val_fraction=0.5, seed=0)  # rebuild replaces, same split
    assert again["sources"] == manifest["sources"]


def test_synthetic_goes_to_train_only_retiled_and_letterboxed(reference, synthetic, tmp_path):
    out = tmp_path / "det"
    manifest = build_detection_dataset(reference, out, synthetic_dirs=[synthetic], single_class=True,
                                       synthetic_fraction=None)
    expected = {"syn0-s256_x0000_y000": [(10, 30, 20, 40)], "syn0-wide_x0256_y000": [(44, 20, 54, 30)],
                "syn0-small_x0000_y000": [(74, 94, 84, 104)]}  # 128 px letterboxed: +64 on both axes
    assert {n for n in tiles_in(out, "train") if n.startswith("syn")} == set(expected)
    assert not any(n.startswith("syn") for n in tiles_in(out, "val"))
    for name, boxes in expected.items():
        assert read_labels(out / "train" / "labels" / f"{name}.txt") == ([0], boxes)
    small = np.asarray(Image.open(out / "train" / "images" / "syn0-small_x0000_y000.png"))
    assert small.shape == (256, 256) and (small[:64] == PAD_VALUE).all() and (small[:, 192:] == PAD_VALUE).all()
    assert (small[64:192, 64:192] == _noise(128, 128, 5)).all()
    assert manifest["class_names"] == ["defect"] and manifest["sources"]["synthetic"][0]["tiles"] == 3
    assert manifest["splits"]["train"]["by_kind"]["synthetic"] == 3
    with pytest.raises(DataError, match="hole"):  # a synthetic class missing from explicit class names
        build_detection_dataset(reference, tmp_path / "x", synthetic_dirs=[synthetic], class_names=["line", "z"])


@pytest.mark.parametrize("fraction, dirs, kept", [
    # val_ids=["c"]: train holds a (2 labelled tiles), b (2), d (1) = 5 real labelled tiles; one synthetic
    # dataset gives 3 tiles, in writing order s256, small, wide; cap = floor(f / (1 - f) * 5)
    (0.3, 1, {"syn0-s256_x0000_y000", "syn0-wide_x0256_y000"}),  # cap floor(2.14) = 2: first and last
    (0.2, 1, {"syn0-s256_x0000_y000"}),  # cap floor(1.25) = 1
    (0.0, 1, set()),
    (None, 1, {"syn0-s256_x0000_y000", "syn0-small_x0000_y000", "syn0-wide_x0256_y000"}),
    (0.5, 2, {f"syn{k}-{n}" for k in (0, 1) for n in ("s256_x0000_y000", "small_x0000_y000",
                                                      "wide_x0256_y000")} - {"syn1-s256_x0000_y000"}),  # cap 5 of 6
])
def test_synthetic_fraction_caps_synthetic_tiles(reference, synthetic, tmp_path, fraction, dirs, kept):
    out = tmp_path / "mix"
    manifest = build_detection_dataset(reference, out, synthetic_dirs=[synthetic] * dirs, val_ids=["c"],
                                       synthetic_fraction=fraction)
    train = tiles_in(out, "train")
    assert {n for n in train if n.startswith("syn")} == kept
    assert len([n for n in train if (out / "train" / "labels" / f"{n}.txt").read_text()]) == 5 + len(kept)
    assert {n for n in (p.stem for p in (out / "train" / "labels").glob("*.txt")) if n.startswith("syn")} == kept
    mix = manifest["synthetic_mix"]
    assert (mix["real_labelled_tiles"], mix["synthetic_tiles_before_cap"], mix["synthetic_tiles"]) == (
        5, 3 * dirs, len(kept))
    assert mix["fraction_achieved"] == pytest.approx(len(kept) / (5 + len(kept)))
    assert fraction is None or mix["fraction_achieved"] <= fraction
    assert [i["tiles"] for i in manifest["sources"]["synthetic"]] == [
        sum(n.startswith(f"syn{k}-") for n in kept) for k in range(dirs)]
    assert manifest["splits"]["train"]["by_kind"]["synthetic"] == len(kept)


def test_detector_config_synthetic_fraction():
    assert DetectorConfig().dataset_kwargs()["synthetic_fraction"] == 0.3
    kw = DetectorConfig(merge_gap=8, min_box_side=16, centre_tiles=True).dataset_kwargs()
    assert (kw["merge_gap"], kw["min_box_side"], kw["centre_tiles"]) == (8, 16, True)
    with pytest.raises(ConfigError, match="merge_gap"):
        DetectorConfig(merge_gap=-1).validate()
    with pytest.raises(ConfigError, match="min_box_side"):
        DetectorConfig(min_box_side=0).validate()
    DetectorConfig(synthetic_fraction=None).validate()
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        DetectorConfig(synthetic_fraction=1.5).validate()


def test_split_long_and_min_box_area(reference, tmp_path):
    out = tmp_path / "long"
    manifest = build_detection_dataset(reference, out, split_long=10)
    split = next(s for s in ("train", "val") if (out / s / "labels" / "a_x0256_y000.txt").exists())
    _, boxes = read_labels(out / split / "labels" / "a_x0256_y000.txt")
    # the 200x2 line (aspect 100 > 10) becomes 10 boxes of 20x2; the 6x8 border piece is kept whole
    assert boxes == [(0, 100, 6, 108)] + [(44 + 20 * i, 200, 64 + 20 * i, 202) for i in range(10)]
    assert manifest["split_long"] == 10
    # vertical, and fitted to the pixels of each segment (a 2-px-wide line drifting right by 1 px halfway)
    pixels = np.zeros((50, 3), bool)
    pixels[:25, 0:2] = pixels[25:, 1:3] = True
    assert split_component((5, 7, 8, 57), pixels, 4) == [  # aspect 50/3 > 4: 5 segments of 10 rows
        (5, 7, 7, 17), (5, 17, 7, 27), (5, 27, 8, 37), (6, 37, 8, 47), (6, 47, 8, 57)]
    out = tmp_path / "min"
    build_detection_dataset(reference, out, min_box_area=10)  # drops the 3x2 dot (area 6) only
    split = next(s for s in ("train", "val") if (out / s / "labels" / "b_x0744_y000.txt").exists())
    assert read_labels(out / split / "labels" / "b_x0744_y000.txt")[1] == [(6, 30, 11, 33)]


def test_thin_defect_boxes_by_hand():
    mask = np.zeros((64, 64), bool)
    mask[10, 5:25] = True  # a 20x1 thread ...
    mask[10, 30:40] = True  # ... broken by a 5 px gap (columns 25-29)
    mask[50:52, 60:62] = True  # a 2x2 speck at the right edge
    # gap 0: three components; a gap of 5 joins the thread's halves (pixels 6 apart: 5 background between)
    assert [b for b, _ in mask_components(mask, merge_gap=0)] == [(5, 10, 25, 11), (30, 10, 40, 11), (60, 50, 62, 52)]
    assert [b for b, _ in mask_components(mask, merge_gap=4)] == [(5, 10, 25, 11), (30, 10, 40, 11), (60, 50, 62, 52)]
    joined = mask_components(mask, merge_gap=5)
    assert [b for b, _ in joined] == [(5, 10, 40, 11), (60, 50, 62, 52)]
    assert joined[0][1].sum() == 30  # only the thread's own pixels, not the gap
    # grown about the centre to 16 px; the speck is shifted back inside the 64 px tile
    assert grow_box((5, 10, 40, 11), 16, 64, 64) == (5, 3, 40, 19)
    assert grow_box((60, 50, 62, 52), 16, 64, 64) == (48, 43, 64, 59)
    assert grow_box((0, 0, 3, 3), 100, 64, 32) == (0, 0, 64, 32)  # never larger than the tile
    assert tile_boxes(mask, merge_gap=5, min_box_area=5, min_box_side=16) == [(5, 3, 40, 19)]  # speck: 4 px^2
    assert tile_boxes(mask) == [(5, 10, 25, 11), (30, 10, 40, 11), (60, 50, 62, 52)]  # defaults unchanged
    # defect-centred origins: centre (22, 10) and (61, 51) of a 128x512 image, clamped inside it
    big = np.zeros((128, 512), bool)
    big[10, 5:40] = True
    big[100:102, 500:502] = True
    assert centred_tile_origins(big, 64) == [(0, 0), (448, 64)]


def test_centred_tiles_add_whole_defects_to_train_only(reference, tmp_path):
    out = tmp_path / "centred"
    manifest = build_detection_dataset(reference, out, centre_tiles=True, merge_gap=8, min_box_side=16,
                                       val_ids=["c"])
    assert (manifest["merge_gap"], manifest["min_box_side"], manifest["centre_tiles"]) == (8, 16, True)
    # image a (1024 px): the 6x8 blob at 250-262 cut by the grid at x=256 gets a tile centred on its
    # group; the three rectangles are >8 px apart, so three groups -> centres (105, 55), (256, 104), (400, 201)
    train = tiles_in(out, "train")
    assert {"a_x0000_y000", "a_x0128_y000", "a_x0272_y000", "a_x0256_y000"} <= train
    _, boxes = read_labels(out / "train" / "labels" / "a_x0128_y000.txt")
    assert boxes == [(120, 96, 136, 112), (172, 193, 256, 209)]  # the whole 12x8 blob and the line, grown to 16 px
    # the val image c stays on the grid (no centred tile), its 4x3 speck grown to 16x16
    assert tiles_in(out, "val") == {"c_x0256_y000", *(t for t in tiles_in(out, "val") if t.startswith("g"))}
    assert read_labels(out / "val" / "labels" / "c_x0256_y000.txt")[1] == [(38, 0, 54, 16)]


def test_split_and_tiling_helpers():
    assert tile_origins(1024, 256) == [0, 256, 512, 768]
    assert tile_origins(1000, 256) == [0, 256, 512, 744]
    assert tile_origins(3796, 256)[-2:] == [3328, 3540]  # AITEX's 3796 px image (tiles.csv)
    assert tile_origins(100, 256) == [0]
    groups = {"t1": [f"i{k}" for k in range(8)], "t2": ["j0", "j1"], "t3": ["k0"]}
    val = split_by_source(groups, 0.25, seed=3)
    assert len(val & set(groups["t1"])) == 2 and len(val & set(groups["t2"])) == 1 and "k0" not in val
    assert split_by_source(groups, 0.25, seed=3) == val and split_by_source(groups, 1.0, 0) == {
        *groups["t1"], *groups["t2"], "k0"}


def test_eval_folder_and_clear_errors(reference, tmp_path, capsys):
    out = tmp_path / "eval"
    manifest = build_eval_dataset(reference, out, class_names=["hole", "line", "extra"])
    assert tiles_in(out, "val") == set(EXPECTED) | BACKGROUND and not tiles_in(out, "train")
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["defectfill_role"] == "eval" and data["names"] == {0: "hole", 1: "line", 2: "extra"}
    assert manifest["splits"]["val"]["per_class"]["extra"] == {"tiles": 0, "boxes": 0}
    with pytest.raises(DataError, match="evaluation folder"):
        train_detector(DetectorConfig(), out / "data.yaml")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="busy"):
        build_detection_dataset(reference, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="nowhere"):
        build_detection_dataset(tmp_path / "nowhere", tmp_path / "x")
    with pytest.raises(ModelError, match="never downloaded"):
        resolve_model("rtdetr-l.pt")
    assert resolve_model("configs/rtdetr/rtdetr_small.yaml") == str(REPO / "configs/rtdetr/rtdetr_small.yaml")
    with pytest.raises(ConfigError, match="imgsz"):
        DetectorConfig(imgsz=100).validate()
    assert detect_main(["eval", "--weights", str(tmp_path / "missing.pt"), "--data-yaml", str(out / "data.yaml")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    built = tmp_path / "cli"
    assert detect_main(["build", "--data-dir", str(reference), "--output-dir", str(built), "--set", "single_class=false",
                        "--set", "val_fraction=0.5"]) == 0
    assert yaml.safe_load((built / "data.yaml").read_text())["names"] == {0: "hole", 1: "line"}
    assert detect_main(["build", "--data-dir", str(reference), "--output-dir", str(built), "--set", "tile=0"]) == 2
    assert "tile must be >= 1" in capsys.readouterr().err
    assert "ultralytics" not in sys.modules
    assert "ultralytics" not in sys.modules


def test_report_json_and_markdown(tmp_path):
    metrics = {"map50": 0.5, "map50_95": 0.25, "precision": 0.75, "recall": 0.5, "f1": 0.6, "instances": 4,
               "split": "val", "per_class": {"hole": {"images": 2, "instances": 4, "ap50": 0.5, "ap50_95": 0.25,
                                                       "precision": 0.75, "recall": 0.5, "f1": 0.6},
                                              "line": {"images": 0, "instances": 0, "ap50": None, "ap50_95": None,
                                                       "precision": None, "recall": None, "f1": None}}}
    json_path, md_path = write_report({"evaluations": {"real only": metrics}}, tmp_path, "r")
    assert json.loads(json_path.read_text())["evaluations"]["real only"] == metrics
    md = md_path.read_text()
    assert "| real only | 0.5000 | 0.2500 | 0.7500 | 0.5000 | 0.6000 | 4 |" in md
    assert "| hole | 2 | 4 | 0.5000 | 0.2500 | 0.7500 | 0.5000 | 0.6000 |" in md
    assert "| line | 0 | 0 | – | – | – | – | – |" in md
    assert not list(tmp_path.glob("*.tmp-*"))


# ----------------------------------------------------------------------------- backbone config (no ultralytics)


def test_default_model_is_the_pretrained_lite0_yaml_and_backbone_options(tmp_path):
    from defectfill.detect.backbone import frozen_layers, layer_args, with_backbone

    assert DetectorConfig().model == DEFAULT_MODEL == LITE0_MODEL
    spec = yaml.safe_load((REPO / LITE0_MODEL).read_text())
    assert layer_args(spec) == {0: [True, True]} and frozen_layers(spec) == [0]
    assert [row[2:] for row in spec["backbone"][1:]] == [["Index", [40, 0]], ["Index", [112, 1]], ["Index", [320, 2]]]
    assert layer_args(with_backbone(spec, False, None)) == {0: [False, True]}
    assert frozen_layers(with_backbone(spec, None, False)) == [] and layer_args(spec) == {0: [True, True]}  # a copy
    assert layer_args(yaml.safe_load((REPO / "configs/rtdetr/rtdetr_small.yaml").read_text())) == {}
    # no option: the resolved YAML itself; an option: a copy with it, written into the run folder
    assert model_for_run(DetectorConfig(), tmp_path / "a") == str(REPO / LITE0_MODEL) and not (tmp_path / "a").exists()
    path = Path(model_for_run(DetectorConfig(backbone_pretrained=False), tmp_path / "b"))
    assert path.parent == tmp_path / "b" and layer_args(yaml.safe_load(path.read_text())) == {0: [False, True]}
    assert yaml.safe_load(path.read_text())["head"] == spec["head"]
    with pytest.raises(ConfigError, match="no EfficientNetLite0 layer"):
        model_for_run(DetectorConfig(model="configs/rtdetr/rtdetr_small.yaml", backbone_frozen=False), tmp_path)
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="not the checkpoint"):
        model_for_run(DetectorConfig(model=str(tmp_path / "w.pt"), backbone_pretrained=True), tmp_path)
    with pytest.raises(ConfigError, match="backbone_frozen"):
        DetectorConfig(backbone_frozen="yes").validate()


def _curve_module():
    from bench.experiments import rtdetr_learning_curve

    return rtdetr_learning_curve


def test_learning_curve_schedule_and_leaves_zero():
    curve = _curve_module()
    args = curve.parse_args(["--eval-at", "100,25", "--eval-every", "50"])
    assert args.eval_at == [25, 100] and args.budget_minutes == 75
    reached = curve.eval_points_reached
    assert not reached([], 24, args.eval_at, 50) and reached([], 30, args.eval_at, 50)  # first epoch end past 25
    assert not reached([30], 90, args.eval_at, 50) and reached([30], 100, args.eval_at, 50)
    assert not reached([100], 149, args.eval_at, 50) and reached([100], 150, args.eval_at, 50)  # then every 50
    assert reached([150], 260, args.eval_at, 50) and not reached([260], 299, args.eval_at, 50)
    points = [{"iteration": 300, "map50": 0.02}, {"iteration": 100, "map50": 0.0}, {"iteration": 200, "map50": 0.004}]
    assert curve.first_above(points, "map50", 0.0) == 200 and curve.first_above(points, "map50", 0.01) == 300
    assert curve.first_above(points, "map50", 0.05) is None and curve.first_above(points, "recall", 0.0) is None
    points.append({"iteration": 150, "map50": 0.001})  # above zero at 150 and 200, zero again at 250
    points.append({"iteration": 250, "map50": 0.0})
    assert curve.first_above(points, "map50", 0.0) == 150 and curve.stays_above(points, "map50", 0.0) == 300
    assert curve.stays_above(points, "map50", 0.05) is None


# ----------------------------------------------------------------------------- ultralytics (subprocesses)


_PROBE = SUBPROCESS_NO_NETWORK + textwrap.dedent("""
    from defectfill.detect.offline import check_dataset_offline
    data = check_dataset_offline(sys.argv[1])
    from ultralytics import RTDETR
    model = RTDETR(sys.argv[2])
    params = sum(p.numel() for p in model.model.parameters())
    print(json.dumps({"nc": data["nc"], "names": data["names"], "val": str(data["val"]), "params": params,
                      "head": type(model.model.model[-1]).__name__, "calls": calls}))
""")

_TRAIN = SUBPROCESS_NO_NETWORK + textwrap.dedent("""
    import time
    from defectfill.cli import detect_main
    ref, out = sys.argv[1], sys.argv[2]
    t0 = time.perf_counter()
    rc0 = detect_main(["build", "--data-dir", ref, "--output-dir", out + "/dataset", "--set", "val_fraction=0.5"])
    rc = detect_main(["train", "--data-yaml", out + "/dataset/data.yaml", "--output_dir", out, "--device", "cpu",
                      "--epochs", "1", "--set", "imgsz=64", "--set", "batch=2", "--set", "nbs=2", "--set", "workers=0",
                      "--set", "mosaic=0"])
    wall = time.perf_counter() - t0
    rc2 = detect_main(["eval", "--weights", out + "/rtdetr/weights/best.pt", "--data-yaml", out + "/dataset/data.yaml",
                       "--batch", "2"])
    print(json.dumps({"rc0": rc0, "rc": rc, "rc2": rc2, "wall": wall, "calls": calls}))
""")


_BACKBONE = SUBPROCESS_NO_NETWORK + textwrap.dedent("""
    import torch
    from defectfill.backbones import weights_path
    from defectfill.detect.backbone import backbone_info, find_backbone
    from defectfill.detect.rtdetr import DetectorConfig, _import_rtdetr, model_for_run, train_detector
    data, out = sys.argv[1], sys.argv[2]
    # the package's own file, in its own (lukemelas) naming, paired with timm names by hand here
    package = torch.load(weights_path(), map_location="cpu", weights_only=True)
    by_hand = {"conv_stem.weight": "_conv_stem.weight", "bn1.running_mean": "_bn0.running_mean",
               "blocks.6.0.conv_dw.weight": "_blocks.15._depthwise_conv.weight",
               "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight"}

    def diff(a, b):
        return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())

    def run(name, **options):
        seen = {}

        def grab(tag):
            def callback(trainer):
                _, layer = find_backbone(trainer.model)
                seen[tag] = {"backbone": {k: v.detach().clone() for k, v in layer.state_dict().items()},
                             "head": {k: v.detach().clone() for k, v in trainer.model.model[-1].state_dict().items()},
                             "trainable": sum(p.numel() for p in layer.parameters() if p.requires_grad)}
            return callback

        cfg = DetectorConfig(epochs=1, imgsz=64, batch=2, nbs=2, workers=0, mosaic=0, device="cpu", lr0=1e-3,
                             output_dir=out, name=name, **options)
        weights = train_detector(cfg, data, callbacks={"on_train_start": grab("start"), "on_train_end": grab("end")})
        start, end = seen["start"], seen["end"]
        net = {k[len("body.net."):]: v for k, v in start["backbone"].items()}
        saved = find_backbone(_import_rtdetr(None)(str(weights.parent / "last.pt")).model)[1].body.net.state_dict()
        return {"start_vs_package": max(float((net[t] - package[p]).abs().max()) for t, p in by_hand.items()),
                "saved_vs_package_fp16": max(float((saved[t].float() - package[p].half().float()).abs().max())
                                             for t, p in by_hand.items()),
                "backbone_change": diff(end["backbone"], start["backbone"]),
                "head_change": diff(end["head"], start["head"]),
                "trainable_start": start["trainable"], "trainable_end": end["trainable"],
                "record": json.loads((weights.parent.parent / "backbone.json").read_text())}

    frozen, unfrozen = run("frozen"), run("unfrozen", backbone_frozen=False)
    random_yaml = model_for_run(DetectorConfig(backbone_pretrained=False), __import__("pathlib").Path(out))
    model = _import_rtdetr(None)(random_yaml)
    print(json.dumps({"frozen": frozen, "unfrozen": unfrozen, "random": backbone_info(model.model), "calls": calls}))
""")


_CACHE = SUBPROCESS_NO_NETWORK + textwrap.dedent("""
    import torch
    from defectfill.detect.backbone import find_backbone
    from defectfill.detect.rtdetr import DetectorConfig, train_args, train_detector
    data, out = sys.argv[1], sys.argv[2]
    result = {}
    for name, cache in (("cached", True), ("plain", False)):
        cfg = DetectorConfig(model="configs/rtdetr/rtdetr_lite0_fast.yaml", epochs=3, imgsz=64, batch=2, nbs=2,
                             workers=0, mosaic=0, device="cpu", lr0=1e-3, output_dir=out, name=name,
                             cache_backbone=cache)
        if not cache:  # the same augmentations as the cached run, computed without a cache
            cfg.train_args = {k: v for k, v in train_args(DetectorConfig(mosaic=0, cache_backbone=True), data).items()
                              if k in ("scale", "translate", "hsv_h", "hsv_s", "hsv_v")}
        weights = train_detector(cfg, data)
        ckpt = torch.load(weights.parent / "last.pt", map_location="cpu", weights_only=False)
        model = ckpt.get("ema") or ckpt["model"]
        result[name] = {"record": json.loads((weights.parent.parent / "backbone.json").read_text()),
                        "ckpt_cache": find_backbone(model)[1].feature_cache,
                        "head": {k: v.float() for k, v in model.model[-1].state_dict().items()}}
    diff = max(float((result["cached"]["head"][k] - result["plain"]["head"][k]).abs().max())
               for k in result["plain"]["head"])
    size = max(float(v.abs().max()) for v in result["plain"]["head"].values())
    print(json.dumps({"calls": calls, "cached": result["cached"]["record"].get("feature_cache"),
                      "plain": result["plain"]["record"].get("feature_cache"),
                      "ckpt_cache": [result[n]["ckpt_cache"] for n in ("cached", "plain")],
                      "head_diff": diff, "head_size": size}))
""")


def _run_ultralytics(code: str, args: list[str], tmp_path: Path, timeout: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YOLO_", "ULTRALYTICS"))}
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "yolo-config"), MPLCONFIGDIR=str(tmp_path / "mpl"),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_ultralytics_accepts_dataset_and_small_model_offline(reference, tmp_path):
    out = tmp_path / "det"
    build_detection_dataset(reference, out, val_fraction=0.5)
    probe = _run_ultralytics(_PROBE, [str(out / "data.yaml"), "configs/rtdetr/rtdetr_small.yaml"], tmp_path, 120)
    assert probe["nc"] == 2 and probe["names"] == {"0": "hole", "1": "line"}
    assert probe["val"] == str(out.resolve() / "val" / "images")
    assert probe["head"] == "RTDETRDecoder" and 3_000_000 <= probe["params"] <= 4_000_000
    assert probe["calls"] == []


def test_pretrained_backbone_survives_train_rebuild_and_stays_frozen(reference, tmp_path):
    out = tmp_path / "det"
    build_detection_dataset(reference, out, val_fraction=0.5, single_class=True)
    res = _run_ultralytics(_BACKBONE, [str(out / "data.yaml"), str(tmp_path / "runs")], tmp_path, 300)
    assert res["calls"] == []
    frozen, unfrozen = res["frozen"], res["unfrozen"]
    # the model ultralytics rebuilt inside train() holds the package's ImageNet weights (checked by hand-paired keys)
    assert frozen["start_vs_package"] == 0.0 and unfrozen["start_vs_package"] == 0.0
    assert frozen["saved_vs_package_fp16"] == 0.0  # ultralytics saves the EMA in fp16
    # frozen: no trainable backbone parameter, weights and BN statistics bit-identical, while the head learned
    assert frozen["trainable_start"] == frozen["trainable_end"] == 0
    assert frozen["backbone_change"] == 0.0 and frozen["head_change"] > 0
    # control: unfrozen, the same check sees the backbone move
    assert unfrozen["trainable_start"] > 2_000_000 and unfrozen["backbone_change"] > 0 and unfrozen["head_change"] > 0
    start, end = frozen["record"]["start"], frozen["record"]["end"]  # what the run records (backbone.json)
    assert start["name"].startswith("efficientnet-lite0 (ImageNet") and start["pretrained"] and start["frozen"]
    assert start["max_abs_diff_to_package"] == 0.0 and end["max_abs_change_in_training"] == 0.0
    assert unfrozen["record"]["start"]["frozen"] is False
    assert unfrozen["record"]["end"]["max_abs_change_in_training"] > 0
    random = res["random"]  # the explicit option: a RANDOM backbone, named so
    assert random["pretrained"] is False and "RANDOM" in random["name"] and random["max_abs_diff_to_package"] > 0.01


def test_feature_cache_matches_the_backbone_and_counts():
    import torch

    from defectfill.detect.backbone import EfficientNetLite0, FeatureCache

    layer = EfficientNetLite0(pretrained=False, frozen=True)
    a, b = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)).unbind(0)[0], torch.zeros(3, 64, 64)
    batch = torch.stack([a, b, a])
    direct = layer(batch)
    layer.feature_cache = FeatureCache()
    first = layer(batch)
    assert layer.feature_cache.info() == {"hits": 1, "misses": 2, "entries": 2}  # a repeats inside the batch
    second = layer(torch.stack([b, torch.flip(a, dims=[2])]))
    assert layer.feature_cache.info() == {"hits": 2, "misses": 3, "entries": 3}  # a flipped image is new
    for f, d in zip(first, direct):
        assert f.shape == d.shape and torch.allclose(f, d, atol=1e-5)
    assert torch.allclose(second[0][0], direct[0][1], atol=1e-5)
    assert "feature_cache" not in layer.__getstate__()
    with pytest.raises(ConfigError, match="cache_backbone needs mosaic: 0"):
        DetectorConfig(cache_backbone=True).validate()
    DetectorConfig(cache_backbone=True, mosaic=0).validate()


def test_cached_backbone_trains_like_the_plain_one(reference, tmp_path):
    out = tmp_path / "det"
    manifest = build_detection_dataset(reference, out, val_fraction=0.5, single_class=True)
    res = _run_ultralytics(_CACHE, [str(out / "data.yaml"), str(tmp_path / "runs")], tmp_path, 300)
    assert res["calls"] == [] and res["plain"] is None
    n = manifest["splits"]["train"]["images"]
    # every train tile passes once per epoch; flips make at most 4 distinct inputs of each, computed once
    assert res["cached"]["hits"] + res["cached"]["misses"] == 3 * n
    assert res["cached"]["misses"] == res["cached"]["entries"] <= min(4, 3) * n and res["cached"]["hits"] > 0
    assert res["ckpt_cache"] == [None, None]  # the saved model never carries the cache
    # the same training up to float rounding (a sub-batch through the backbone rounds differently)
    assert res["head_diff"] <= 1e-3 * res["head_size"]


def test_tiny_training_end_to_end(reference, tmp_path):
    out = tmp_path / "run"
    res = _run_ultralytics(_TRAIN, [str(reference), str(out)], tmp_path, 150)
    assert res["rc0"] == 0 and res["rc"] == 0 and res["rc2"] == 0 and res["calls"] == []
    assert (out / "rtdetr" / "weights" / "best.pt").is_file()
    results = json.loads((out / "rtdetr" / "results.json").read_text())
    metrics = results["evaluations"]["val"]
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    for key in ("map50", "map50_95", "precision", "recall", "f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # ultralytics read our labels: its instance/image counts are the manifest's val boxes / labelled tiles
    assert metrics["instances"] == manifest["splits"]["val"]["boxes"] > 0
    assert list(metrics["per_class"]) == ["defect"]  # DetectorConfig.single_class defaults to True
    assert metrics["per_class"]["defect"]["images"] == manifest["splits"]["val"]["labelled"]
    assert results["config"]["epochs"] == 1 and results["config"]["output_dir"] == str(out)
    backbone = json.loads((out / "rtdetr" / "backbone.json").read_text())  # the default: pretrained, frozen
    assert results["config"]["model"] == LITE0_MODEL and backbone["start"]["pretrained"] and backbone["start"]["frozen"]
    assert "| val |" in (out / "rtdetr" / "results.md").read_text()
    again = json.loads((out / "rtdetr" / "eval_val.json").read_text())["evaluations"]["val"]
    assert again["map50"] == metrics["map50"] and again["instances"] == metrics["instances"]


# ----------------------------------------------------------------------------- real AITEX data


def test_aitex_tiles_match_curated_tile_index(aitex_root, tmp_path):
    ids = ["0030_019_02", "0094_027_05", "0105_010_03"]  # 8-px fuzzyball, 3796-px knots, 7-tile broken_pick
    rows = list(csv.DictReader((aitex_root / "manifest.csv").open()))
    good = next(r["id"] for r in rows if r["kind"] == "good")
    ref = tmp_path / "aitex"
    for sub in ("images", "masks"):
        (ref / sub).mkdir(parents=True)
        for i in ids:
            shutil.copy(aitex_root / sub / f"{i}.png", ref / sub / f"{i}.png")
    (ref / "good").mkdir()
    shutil.copy(aitex_root / "good" / f"{good}.png", ref / "good" / f"{good}.png")
    with (ref / "manifest.csv").open("w") as f:
        f.write("id,defect_type\n" + "".join(f"{r['id']},{r['defect_type']}\n" for r in rows if r["id"] in ids))
    out = tmp_path / "det"
    build_detection_dataset(ref, out, val_fraction=0.5)
    index = list(csv.DictReader((aitex_root / "tiles" / "tiles.csv").open()))
    curated = {r["tile_id"]: r for r in index if r["source_id"] in ids and r["has_defect"] == "1"}
    written = {s: tiles_in(out, s) for s in ("train", "val")}
    labelled = {n for s in written.values() for n in s if not n.startswith(good)}
    assert labelled == set(curated) and len(labelled) >= 9
    assert {n for s in written.values() for n in s if n.startswith(good)} == {
        f"{good}_x{x:04d}_y000" for x in range(0, 4096, 256)}
    for name in labelled:
        split = "train" if name in written["train"] else "val"
        image = np.asarray(Image.open(out / split / "images" / f"{name}.png"))
        assert image.shape == (256, 256)
        assert (image == np.asarray(Image.open(aitex_root / "tiles" / "images" / f"{name}.png"))).all()
        tile_mask = np.asarray(Image.open(aitex_root / "tiles" / "masks" / f"{name}.png")) >= 128
        assert read_labels(out / split / "labels" / f"{name}.txt")[1] == mask_to_boxes(tile_mask), name


def test_box_fill_stats_by_hand():
    mask = np.zeros((256, 256), bool)
    for i in range(200):  # a diagonal line, 200 px wide and 50 rows high: one 200 x 50 box, 200 pixels
        mask[20 + i // 4, 10 + i] = True
    assert box_fill_stats([mask]) == {"boxes": 1, "mean_fill": 0.02, "median_fill": 0.02, "p10_fill": 0.02}
    # aspect 4 > 2: two segments of 100 columns, each a 100 x 25 box holding 100 pixels
    split = box_fill_stats([mask], split_long=2)
    assert split["boxes"] == 2 and split["mean_fill"] == pytest.approx(100 / 2500)
    assert box_fill_stats([np.zeros((64, 64), bool)], tile=64)["boxes"] == 0


def test_build_class_names_turn_per_type_classes_on_and_caps_are_said(reference, synthetic, tmp_path, capsys):
    out = tmp_path / "named"
    assert detect_main(["build", "--data-dir", str(reference), "--output-dir", str(out), "--class-names", "line,hole",
                        "--synthetic", str(synthetic), "--set", "val_fraction=0.5", "--set", "synthetic_fraction=0.2"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "line", 1: "hole"}  # the given order
    manifest = json.loads((out / "manifest.json").read_text())
    mix = manifest["synthetic_mix"]
    assert mix["synthetic_tiles"] < mix["synthetic_tiles_before_cap"] == 3
    assert printed[-1] == (f"synthetic tiles capped: kept {mix['synthetic_tiles']} of 3 (synthetic_fraction 0.2 of "
                           f"{mix['real_labelled_tiles']} real labelled training tiles; set synthetic_fraction=null "
                           f"for no cap)")
    assert detect_main(["build", "--data-dir", str(reference), "--output-dir", str(tmp_path / "x"),
                        "--class-names", "line,hole,crack"]) == 2
    assert "['crack'] match no defect type in the data (found: hole, line)" in capsys.readouterr().err
    uncapped = tmp_path / "uncapped"
    assert detect_main(["build", "--data-dir", str(reference), "--output-dir", str(uncapped), "--synthetic", str(synthetic),
                        "--set", "synthetic_fraction=null"]) == 0
    assert "synthetic tiles capped" not in capsys.readouterr().out


_PHASES = SUBPROCESS_NO_NETWORK + textwrap.dedent("""
    from pathlib import Path
    import yaml
    from defectfill.benchmark.worker import detector_job
    ref, syn, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    det = {"steps": 4, "synthetic_phase": 0.5, "imgsz": 64, "batch": 2, "mosaic": 0, "device": "cpu", "lr0": 1e-3}
    result = detector_job({"pool_dir": ref, "val_ids": ["c"], "detector": det, "synthetic_dirs": [syn], "limit": None,
                           "seed": 0, "work_dir": str(out), "evals": {}, "keep_dataset": True})
    args = {p: yaml.safe_load((out / f"rtdetr_{p}" / "args.yaml").read_text()) for p in ("synthetic", "real")}
    lists = {p: [Path(x).stem for x in (out / "dataset" / f"{p}.txt").read_text().split()] for p in ("synthetic", "real")}
    print(json.dumps({"phases": result["phases"], "iterations": result["iterations"], "weights": result["weights"],
                      "args": {p: {k: a[k] for k in ("model", "data", "epochs")} for p, a in args.items()},
                      "lists": lists, "calls": calls}))
""")


def test_synthetic_pretraining_then_real_fine_tuning(reference, synthetic, tmp_path):
    """detector.synthetic_phase 0.5: half the budget on synthetic + good tiles, then the rest on real + good
    tiles from the first phase's last weights (what ultralytics recorded in each run's args.yaml)."""
    from defectfill.detect.dataset import train_subset_yaml

    out = tmp_path / "job"
    res = _run_ultralytics(_PHASES, [str(reference), str(synthetic), str(out)], tmp_path, 300)
    assert res["calls"] == []
    train = tiles_in(out / "dataset", "train")
    syn = {n for n in train if n.startswith("syn")}
    good = {n for n in train if n.split("_x")[0] in GOOD}
    real = {n for n in train if n.split("_x")[0] in DEFECTS}
    assert syn and good and real and syn | good | real == train
    assert set(res["lists"]["synthetic"]) == syn | good and set(res["lists"]["real"]) == real | good
    assert [p["phase"] for p in res["phases"]] == ["synthetic", "real"]
    assert [p["target_iterations"] for p in res["phases"]] == [2, 2]
    assert [p["train_tiles"] for p in res["phases"]] == [len(syn | good), len(real | good)]
    first_last = str(out / "rtdetr_synthetic" / "weights" / "last.pt")
    assert res["args"]["real"]["model"] == first_last  # fine-tuned from the synthetic phase's weights
    assert res["args"]["synthetic"]["data"] == str(out / "dataset" / "synthetic.yaml")
    assert res["weights"].startswith(str(out / "rtdetr_real"))
    manifest = json.loads((out / "dataset" / "manifest.json").read_text())
    with pytest.raises(DataError, match="no labelled train tile"):
        train_subset_yaml(out / "dataset", manifest, ["good"], "background_only")
