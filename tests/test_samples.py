"""SampleWriter: labels, COCO export, atomic resume, merging, contact sheet, offline ultralytics check."""

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from netguard import SUBPROCESS_NO_NETWORK
from PIL import Image

from defectfill.generation import samples as samples_mod
from defectfill.generation.samples import (
    CELL,
    GAP,
    TITLE_H,
    Sample,
    SampleWriter,
    boxes_from_mask,
    coco_rle,
    crop_window,
    load_yolo_dataset,
    mask_components,
    yolo_lines,
    yolo_to_boxes,
)

# Hand-drawn 12x16 mask: component -> (pixels as (row, col), box (x0, y0, x1, y1) exclusive).
H, W = 12, 16
COMPONENTS = {
    "top": ([(0, 6), (0, 7), (0, 8)], (6, 0, 9, 1)),
    "left": ([(r, c) for r in (2, 3, 4) for c in (0, 1)], (0, 2, 2, 5)),
    "ell": ([(2, 10), (2, 11), (2, 12), (3, 10)], (10, 2, 13, 4)),
    "right": ([(5, 15), (6, 15), (7, 15)], (15, 5, 16, 8)),
    "diagonal": ([(6, 8), (7, 9), (8, 10)], (8, 6, 11, 9)),  # touches only at corners: one 8-component
    "tiny": ([(9, 13)], (13, 9, 14, 10)),
    "bottom": ([(11, 4), (11, 5), (11, 6)], (4, 11, 7, 12)),
    "corner": ([(11, 15)], (15, 11, 16, 12)),  # bottom-right corner pixel
}
ORDER = ["top", "left", "ell", "right", "diagonal", "tiny", "bottom", "corner"]  # by (y0, x0)
CLASSES = ["hole", "stain", "thread"]


def component_mask(key, shape=(H, W)):
    m = np.zeros(shape, dtype=bool)
    for r, c in COMPONENTS[key][0]:
        m[r, c] = True
    return m


def hand_mask():
    return np.logical_or.reduce([component_mask(k) for k in COMPONENTS])


def grey(h=H, w=W, value=100):
    return np.full((h, w), value, dtype=np.uint8)


def make_sample(name, defect_class="hole", mask=None, image=None, clean=None, **sidecar):
    mask = hand_mask() if mask is None else mask
    image = grey(*mask.shape) if image is None else image
    return Sample(name=name, image=image, mask=mask, defect_class=defect_class,
                  sidecar={"seed": 7, **sidecar}, clean=clean)


# ----------------------------------------------------------------------------- pure label functions


def test_boxes_from_hand_mask_border_and_diagonal_components():
    expected = [COMPONENTS[k][1] for k in ORDER]
    assert boxes_from_mask(hand_mask()) == expected
    assert [box for box, _ in mask_components(hand_mask())] == expected
    for (box, pixels), key in zip(mask_components(hand_mask()), ORDER):
        x0, y0, x1, y1 = box
        assert np.array_equal(pixels, component_mask(key)[y0:y1, x0:x1])
    # min_area drops the two single-pixel components
    assert boxes_from_mask(hand_mask(), min_area=2) == [COMPONENTS[k][1] for k in ORDER if k not in ("tiny", "corner")]


def test_yolo_lines_format_and_round_trip():
    lines = yolo_lines([COMPONENTS["left"][1]], 2, W, H)
    assert lines == ["2 0.062500 0.291667 0.125000 0.250000"]  # xc=1/16, yc=3.5/12, w=2/16, h=3/12
    boxes = boxes_from_mask(hand_mask())
    assert yolo_to_boxes(yolo_lines(boxes, 1, W, H), W, H) == (boxes, [1] * len(boxes))
    with pytest.raises(ValueError, match="line 2"):
        yolo_to_boxes(["0 0.5 0.5 0.1 0.1", "0 0.5 0.5"], W, H)
    with pytest.raises(ValueError, match="outside"):
        yolo_lines([(0, 0, W + 1, 1)], 0, W, H)


def test_line_scan_round_trip_4096x256():
    mask = np.zeros((256, 4096), dtype=bool)
    mask[100:121, 0:11] = True  # left border
    mask[0:5, 4090:4096] = True  # top-right corner
    mask[250:256, 2000:2300] = True  # bottom border, wide
    mask[30, 1000] = mask[31, 1001] = True  # diagonal pair
    expected = [(4090, 0, 4096, 5), (1000, 30, 1002, 32), (0, 100, 11, 121), (2000, 250, 2300, 256)]
    assert boxes_from_mask(mask) == expected
    assert yolo_to_boxes(yolo_lines(expected, 0, 4096, 256), 4096, 256) == (expected, [0] * 4)


def test_coco_rle_is_json_and_decodes():
    from pycocotools import mask as mask_util

    rle = coco_rle(hand_mask())
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    json.dumps(rle)
    decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), hand_mask())


def test_crop_window_line_scan():
    # small box at the right edge: 64 px square, clamped inside, containing the box
    assert crop_window((4090, 100, 4096, 110), 4096, 256) == (4032, 73, 4096, 137)
    # a 300 px box: 600 px of context along x, but only the 256 px the image has along y
    assert crop_window((2000, 10, 2300, 20), 4096, 256) == (1850, 0, 2450, 256)
    assert crop_window(None, 4096, 256) == (2016, 96, 2080, 160)


# ----------------------------------------------------------------------------- writer


def test_write_layout_modes_and_sidecar(tmp_path):
    w = SampleWriter(tmp_path, CLASSES)
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    w.write(make_sample("grey-0", "stain", image=grey(), lora_hash="abc", score=np.float32(0.5)))
    path = w.write(make_sample("rgb-0", "thread", image=rgb))
    assert path == tmp_path.resolve() / "images" / "rgb-0.png"
    with Image.open(tmp_path / "images" / "grey-0.png") as im:
        assert im.mode == "L" and np.array_equal(np.asarray(im), grey())
    with Image.open(tmp_path / "images" / "rgb-0.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), rgb)
    with Image.open(tmp_path / "masks" / "grey-0.png") as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im))) == {0, 255}
        assert np.array_equal(np.asarray(im) == 255, hand_mask())
    lines = (tmp_path / "labels" / "rgb-0.txt").read_text().splitlines()
    assert yolo_to_boxes(lines, W, H) == ([COMPONENTS[k][1] for k in ORDER], [2] * len(ORDER))
    side = json.loads((tmp_path / "sidecars" / "grey-0.json").read_text())
    assert side["name"] == "grey-0" and side["defect_class"] == "stain" and side["lora_hash"] == "abc"
    assert side["seed"] == 7 and side["score"] == 0.5 and (side["width"], side["height"]) == (W, H)
    assert [tuple(b) for b in side["boxes"]] == [COMPONENTS[k][1] for k in ORDER]
    assert not (tmp_path / "clean").exists()  # no clean given
    assert not any(".tmp" in p.name for p in tmp_path.rglob("*"))


def test_bad_samples_raise_before_writing(tmp_path):
    w = SampleWriter(tmp_path, CLASSES)
    with pytest.raises(ValueError, match="'scratch'"):
        w.write(make_sample("s-0", "scratch"))
    with pytest.raises(ValueError, match="s-1: mask shape"):
        w.write(make_sample("s-1", mask=np.zeros((3, 3), bool), image=grey()))
    with pytest.raises(ValueError, match="not a plain file stem"):
        w.write(make_sample("../evil"))
    with pytest.raises(ValueError, match="s-2: sidecar is not JSON"):
        w.write(make_sample("s-2", blob=object()))
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("min_area", [1, 2])
def test_coco_export_matches_hand_components(tmp_path, min_area):
    from pycocotools.coco import COCO

    w = SampleWriter(tmp_path, CLASSES, min_component_area=min_area)
    second = component_mask("left") | component_mask("tiny")
    w.write(make_sample("a-0", "hole"))
    w.write(make_sample("b-0", "thread", mask=second))
    summary = w.finalize()
    keys = [k for k in ORDER if min_area == 1 or len(COMPONENTS[k][0]) >= min_area]
    keys_b = [k for k in ("left", "tiny") if k in keys]
    assert summary["samples"] == 2 and summary["boxes"] == len(keys) + len(keys_b)
    assert summary["per_class"]["hole"] == {"samples": 1, "boxes": len(keys)}
    assert summary["per_class"]["thread"] == {"samples": 1, "boxes": len(keys_b)}

    coco = COCO(str(tmp_path / "annotations.json"))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {1: "hole", 2: "stain", 3: "thread"}
    imgs = {im["file_name"]: im for im in coco.loadImgs(coco.getImgIds())}
    assert set(imgs) == {"images/a-0.png", "images/b-0.png"}
    first = imgs["images/a-0.png"]
    assert first["id"] == 1 and (first["width"], first["height"]) == (W, H)
    for file_name, expected_keys, cat in (("images/a-0.png", keys, 1), ("images/b-0.png", keys_b, 3)):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[imgs[file_name]["id"]]))
        assert len(anns) == len(expected_keys)
        for ann, key in zip(anns, expected_keys):
            x0, y0, x1, y1 = COMPONENTS[key][1]
            assert ann["bbox"] == [x0, y0, x1 - x0, y1 - y0]
            assert ann["area"] == len(COMPONENTS[key][0]) and ann["iscrowd"] == 0 and ann["category_id"] == cat
            assert np.array_equal(coco.annToMask(ann).astype(bool), component_mask(key))
        if min_area == 1:  # union of the annotations is exactly the written mask
            union = np.logical_or.reduce([coco.annToMask(a).astype(bool) for a in anns])
            with Image.open(tmp_path / file_name.replace("images/", "masks/")) as im:
                assert np.array_equal(union, np.asarray(im) == 255)
    # YOLO labels agree with COCO (tiny dropped from both when min_area=2)
    loaded = dict((n, (b, c)) for n, b, c in load_yolo_dataset(tmp_path))
    assert loaded["a-0"] == ([COMPONENTS[k][1] for k in keys], [0] * len(keys))
    assert loaded["b-0"] == ([COMPONENTS[k][1] for k in keys_b], [2] * len(keys_b))
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data == {"path": str(tmp_path.resolve()), "train": "images", "val": "images",
                    "names": {0: "hole", 1: "stain", 2: "thread"}}


def test_interrupted_write_resume_and_rejected(tmp_path, monkeypatch):
    w = SampleWriter(tmp_path, CLASSES)
    for i in range(3):
        w.write(make_sample(f"slot-{i:06d}"))

    real_write = samples_mod.atomic_write_text

    def killed_before_sidecar(path, text):
        if path.parent.name == "sidecars":
            raise KeyboardInterrupt  # the process dies after the image, mask and label landed
        return real_write(path, text)

    monkeypatch.setattr(samples_mod, "atomic_write_text", killed_before_sidecar)
    with pytest.raises(KeyboardInterrupt):
        w.write(make_sample("slot-000003", clean=grey(value=50)))
    monkeypatch.undo()
    assert (tmp_path / "images" / "slot-000003.png").is_file()
    (tmp_path / "images" / "slot-000004.png.tmp-99999").write_bytes(b"half a png")
    (tmp_path / "sidecars" / "slot-000005.json.tmp-99999").write_text("{")

    w.write_rejected(make_sample("slot-000006", "stain"), reason="low realism score")
    assert [w.is_done(f"slot-{i:06d}") for i in range(7)] == [True, True, True, False, False, False, True]
    assert w.completed_names() == {"slot-000000", "slot-000001", "slot-000002", "slot-000006"}
    with pytest.raises(ValueError, match="already accepted"):
        w.write_rejected(make_sample("slot-000000"), reason="x")

    summary = w.finalize()
    assert summary["samples"] == 3 and summary["rejected"] == 1 and summary["boxes"] == 3 * len(ORDER)
    assert summary["per_class"]["stain"] == {"samples": 0, "boxes": 0}
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert not any("slot-000003" in p or "slot-000004" in p or "slot-000005" in p for p in left)
    assert not any(".tmp" in p for p in left)
    assert {p for p in left if p.startswith("rejected/")} == {
        "rejected/images/slot-000006.png", "rejected/masks/slot-000006.png", "rejected/sidecars/slot-000006.json"}
    assert json.loads((tmp_path / "rejected/sidecars/slot-000006.json").read_text())["reason"] == "low realism score"
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [f"slot-{i:06d}.txt" for i in range(3)]
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"images/slot-{i:06d}.png" for i in range(3)]
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 3 * len(ORDER) + 1))

    # resume: a retry of a rejected slot replaces the rejection
    w.write(make_sample("slot-000006", "stain"))
    summary = w.finalize()
    assert summary["samples"] == 4 and summary["rejected"] == 0
    assert not (tmp_path / "rejected/sidecars/slot-000006.json").exists()


def _write_names(root, names):
    w = SampleWriter(root, CLASSES)
    for name in names:
        w.write(make_sample(name, "stain" if name.startswith("b") else "hole"))


def test_two_processes_merge_into_one_export(tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_write_names, args=(tmp_path, names))
             for names in (["a-0", "a-1", "a-2"], ["b-0", "b-1"])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    summary = SampleWriter(tmp_path, CLASSES).finalize()
    assert summary["samples"] == 5
    assert summary["per_class"]["hole"]["samples"] == 3 and summary["per_class"]["stain"]["samples"] == 2
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == [f"images/{n}.png" for n in
                                                          ("a-0", "a-1", "a-2", "b-0", "b-1")]
    assert [n for n, _, _ in load_yolo_dataset(tmp_path)] == ["a-0", "a-1", "a-2", "b-0", "b-1"]
    assert {c for _, _, cs in load_yolo_dataset(tmp_path) for c in cs} == {0, 1}


def _red_rows(sheet, rows):
    """Row indices whose result cell holds pure red (box outline) pixels."""
    a = np.asarray(sheet.convert("RGB"))
    red = (a[..., 0] == 255) & (a[..., 1] == 0) & (a[..., 2] == 0)
    x0 = GAP + 2 * (CELL + GAP)
    return [r for r in range(rows) if red[TITLE_H + r * (CELL + GAP): TITLE_H + r * (CELL + GAP) + CELL,
                                          x0: x0 + CELL].any()]


def test_contact_sheet_from_line_scans(tmp_path):
    heights = {}
    for rows in (1, 3):
        root = tmp_path / f"rows{rows}"
        w = SampleWriter(root, CLASSES, contact_sheet_samples=rows)
        for i in range(5):
            mask = np.zeros((256, 4096), dtype=bool)
            mask[120:130, 800 * i + 5: 800 * i + 25] = True
            mask[10:12, 3000:3400] = True  # thin, wide thread: shrinks to < 1 px tall in the cell
            clean = None if i == 0 else grey(256, 4096, 90)
            w.write(make_sample(f"line-{i}", mask=mask, image=np.where(mask, 200, 90).astype(np.uint8), clean=clean))
        assert w.finalize()["contact_sheet_rows"] == rows
        with Image.open(root / "contact_sheet.png") as sheet:
            sheet.load()
        heights[rows] = sheet.height
        assert sheet.width == 3 * CELL + 4 * GAP
        assert _red_rows(sheet, rows) == list(range(rows))
        # first row is line-0 (names evenly spread, first included): no clean image -> grey cell
        cell = np.asarray(sheet.convert("RGB"))[TITLE_H: TITLE_H + CELL, GAP: GAP + CELL]
        assert (cell == 128).all(axis=-1).mean() > 0.8
    assert heights[3] - heights[1] >= 2 * CELL


# ----------------------------------------------------------------------------- offline ultralytics

_CHECK = SUBPROCESS_NO_NETWORK + textwrap.dedent("""
    from defectfill.detect.offline import check_dataset_offline, prepare_ultralytics_offline
    data = check_dataset_offline(sys.argv[1])
    import ultralytics.utils as u
    again = prepare_ultralytics_offline()  # already imported offline: accepted
    print(json.dumps({"names": data["names"], "nc": data["nc"], "train": str(data["train"]),
                      "offline": os.environ["YOLO_OFFLINE"], "online": u.ONLINE, "sync": u.SETTINGS["sync"],
                      "user_dir": str(u.USER_CONFIG_DIR), "again": str(again), "calls": calls}))
""")

_TOO_LATE = textwrap.dedent("""
    import socket, sys
    socket.getaddrinfo = lambda *a, **k: (_ for _ in ()).throw(OSError("no network"))
    import ultralytics.utils
    from defectfill.detect.offline import prepare_ultralytics_offline
    try:
        prepare_ultralytics_offline()
    except RuntimeError as e:
        print("REFUSED:", e)
""")


def _clean_env(config_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(YOLO_CONFIG_DIR=str(config_dir), HF_HUB_OFFLINE="1")
    return env


def test_ultralytics_accepts_export_offline(tmp_path):
    data_root = tmp_path / "data"
    w = SampleWriter(data_root, ["hole", "stain"])
    w.write(make_sample("a-0", "hole"))
    w.write(make_sample("b-0", "stain", image=np.zeros((H, W, 3), np.uint8)))
    w.finalize()
    config = tmp_path / "yolo-config"
    run = subprocess.run([sys.executable, "-c", _CHECK, str(data_root / "data.yaml")], cwd=tmp_path,
                         env=_clean_env(config), capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["names"] == {"0": "hole", "1": "stain"} and out["nc"] == 2
    assert out["train"] == str((data_root / "images").resolve())
    assert out["offline"] == "true" and out["online"] is False and out["sync"] is False
    assert out["calls"] == []  # no DNS lookup or connection was even attempted
    assert out["user_dir"] == str(config.resolve() / "Ultralytics") and out["again"] == str(config.resolve())
    for font in ("Arial.ttf", "Arial.Unicode.ttf"):
        assert (config / "Ultralytics" / font).stat().st_size > 100_000
    assert json.loads((config / "Ultralytics" / "settings.json").read_text())["sync"] is False


def test_prepare_refuses_after_online_import(tmp_path):
    run = subprocess.run([sys.executable, "-c", _TOO_LATE], cwd=tmp_path, env=_clean_env(tmp_path / "cfg"),
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr
    assert "REFUSED:" in run.stdout and "YOLO_OFFLINE" in run.stdout


def test_contact_sheet_shows_defects_at_native_resolution(tmp_path):
    from defectfill.generation.samples import native_window

    # a 1 px thread 400 px long: a CELL-wide window at 1:1 (not shrunk), centred on it
    assert native_window((3000, 10, 3400, 11), 4096, 256) == ((3200 - CELL // 2, 0, 3200 + CELL // 2, CELL), 1)
    # a small defect: crop_window's 64 px, enlarged by CELL // 64
    assert native_window((100, 120, 110, 130), 4096, 256) == ((73, 93, 137, 157), CELL // 64)
    root = tmp_path / "thin"
    w = SampleWriter(root, CLASSES, contact_sheet_samples=1)
    mask = np.zeros((256, 4096), dtype=bool)
    mask[100, 3000:3400] = True
    w.write(make_sample("thread", mask=mask, image=np.where(mask, 200, 90).astype(np.uint8), clean=grey(256, 4096, 90)))
    w.finalize()
    with Image.open(root / "contact_sheet.png") as sheet:
        a = np.asarray(sheet.convert("L"))
    x0 = GAP + 2 * (CELL + GAP)
    result = a[TITLE_H: TITLE_H + CELL, x0: x0 + CELL]
    # the thread keeps its full grey value (no resampling blur) across the cell, in one row; only the box's
    # two side edges (2 px outside the defect, clamped to the cell) cross it
    assert (result == 200).any(axis=1).sum() == 1 and (result == 200).sum() == CELL - 2
