"""Truthful synthetic samples end to end: placement on fabric, the placed defect pasted, labels from
the pixels that changed, rejection of invisible samples, inspection numbers."""

import csv
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from scipy import ndimage

from defectfill.config import GenerateConfig
from defectfill.generation.compositing import texture_level, visible_change, visible_fraction
from defectfill.generation.run import inspection_summary, run_generation
from defectfill.generators import Generator

H, W = 96, 512
WHITE = slice(0, 160)  # off-fabric columns of every image


def fabric(seed: int) -> np.ndarray:
    """Woven-like texture (grey ~100-160) with a saturated white band at the left end."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    threads = 15 * np.sin(2 * np.pi * xx / 6) * np.sin(2 * np.pi * yy / 5)
    image = np.clip(130 + threads + rng.normal(0, 6, (H, W)), 95, 165).astype(np.uint8)
    image[:, WHITE] = 255
    return image


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory):
    """Two fabric types; each defect a dark bar on its fabric; clean images of both fabrics."""
    root = tmp_path_factory.mktemp("truthful") / "data"
    for sub in ("images", "masks", "good"):
        (root / sub).mkdir(parents=True)
    rows = []
    for i, (fab, box) in enumerate([("f0", (30, 300, 6, 40)), ("f0", (50, 400, 20, 5)), ("f1", (40, 350, 8, 8))]):
        image, mask = fabric(i), np.zeros((H, W), bool)
        y, x, h, w = box
        mask[y:y + h, x:x + w] = True
        image[mask] = np.clip(image[mask].astype(int) - 60, 0, 255)
        Image.fromarray(image).save(root / "images" / f"d{i}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"d{i}.png")
        rows.append([f"d{i}", "bar", fab, "defect"])
    for i, fab in enumerate(["f0", "f1", "f0", "f1"]):
        Image.fromarray(fabric(10 + i)).save(root / "good" / f"g{i}.png")
        rows.append([f"g{i}", "", fab, "good"])
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "defect_type", "fabric_type", "kind"])
        w.writerows(rows)
    return root


# ---- labels from the change (pure functions) ----

def test_exported_label_is_the_changed_part_of_the_requested_mask():
    """Requested: a 10x60 bar. The left 30 columns darken by 40 (far above the texture), the right 30 are
    left as they were: the label holds every darkened pixel and nothing 3 px or more beyond them."""
    clean = fabric(0)
    requested = np.zeros((H, W), bool)
    requested[40:50, 300:360] = True
    result = clean.copy()
    result[40:50, 300:330] = clean[40:50, 300:330] - 40
    label, threshold, level = visible_change(clean, result, requested)
    assert 5 < level < 25 and threshold == pytest.approx(0.5 * level)
    changed = np.zeros_like(requested)
    changed[40:50, 300:330] = True
    assert label[changed].all()
    assert not label[:, 333:].any() and not (label & ~requested).any()
    assert visible_fraction(label, requested) == pytest.approx(label.sum() / 600) and 0.5 <= label.sum() / 600 < 0.55


def test_a_change_below_the_floor_is_invisible_on_flat_ground_and_narrow_gaps_are_bridged():
    clean = np.full((H, W), 120, np.uint8)
    requested = np.zeros((H, W), bool)
    requested[20:24, 100:200] = True
    faint = clean.copy()
    faint[requested] += 1  # below the 2-grey-level floor
    assert not visible_change(clean, faint, requested)[0].any()
    dashed = clean.copy()
    dashed[20:24, 100:200] -= 30
    dashed[20:24, 150:152] = 120  # a 2-px gap: one defect, one component
    dashed[20:24, 170:180] = 120  # a 10-px gap: two pieces
    label = visible_change(clean, dashed, requested, sigma=0)[0]
    pieces, n = ndimage.label(label, structure=np.ones((3, 3)))
    assert n == 2 and len(np.unique(pieces[20:24, 100:170])) == 2  # background + one piece across the 2-px gap
    assert not label[20:24, 174:176].any()
    assert texture_level(clean) == 0.0


# ---- run_generation with the truthful defaults ----

class HalfPainter(Generator):
    """Darkens the left `share` of the mask's columns by 50: a generator whose output only partly fills its mask."""

    name = "half_painter"
    preserves_background = True

    def __init__(self, share: float):
        self.share = share

    def synthesize(self, clean, mask, seed, defect_class=None, placement=None):
        out = clean.copy()
        xs = np.nonzero(mask.any(axis=0))[0]
        cut = xs.min() + int(round(self.share * (xs.max() - xs.min() + 1)))
        part = mask.copy()
        part[:, cut:] = False
        out[part] = np.clip(out[part].astype(int) - 50, 0, 255)
        return out, {"painted_pixels": int(part.sum())}


def generate(ref_root, out, factory=None, **kw):
    cfg = GenerateConfig(generator="copy_paste", checkpoint=None, clean_dir=str(ref_root / "good"), masks="auto",
                         reference_dir=str(ref_root), num_samples=12, seed=4, output_dir=str(out), dilation=4,
                         **kw)
    if factory is None:
        from gan_baselines.copy_paste import CopyPasteConfig, CopyPasteGenerator

        factory = lambda cfg, device: CopyPasteGenerator(CopyPasteConfig(data_dir=str(ref_root)))  # noqa: E731
    return run_generation(cfg, synthesizer_factory=factory)


def sidecars(root, rejected=False):
    folder = root / ("rejected/sidecars" if rejected else "sidecars")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def test_copy_paste_samples_sit_on_fabric_paste_the_placed_defect_and_label_what_changed(ref_root, tmp_path):
    summary = generate(ref_root, tmp_path / "cp")
    accepted = sidecars(tmp_path / "cp")
    assert summary["samples"] == len(accepted) >= 10
    for side in accepted:
        name = f"{side['slot']:06d}"
        requested = mask_util.decode(side["requested_mask_rle"]).astype(bool)
        exported = np.asarray(Image.open(tmp_path / "cp" / "masks" / f"{name}.png")) > 0
        assert not requested[:, WHITE].any(), "a mask on the white band"
        assert side["mask_source"] == f"auto:{side['reference_id']}", "pasted a defect other than the placed one"
        assert side["placement"]["fabric_match"] and side["placement"]["reference_fabric"] == \
            side["placement"]["clean_fabric"]
        assert not (exported & ~requested).any() and side["visible_fraction"] >= 0.5
        clean = np.asarray(Image.open(side["source_image"]))
        result = np.asarray(Image.open(tmp_path / "cp" / "images" / f"{name}.png"))
        assert (result.astype(int) - clean)[exported].mean() < -30  # the bar's -60, pasted where labelled
    insp = summary["inspection"]
    assert insp["accepted_over_5pct_off_fabric"] == 0 and insp["fabric_matched"] == insp["placed"] == 12
    assert insp["visible_fraction_exported"]["median"] == 1.0


@pytest.mark.parametrize("share, accepted", [(1.0, 12), (0.1, 0)])
def test_samples_that_change_too_little_of_their_mask_are_rejected_and_counted(ref_root, tmp_path, share, accepted):
    out = tmp_path / f"half{share}"
    summary = generate(ref_root, out, factory=lambda cfg, device: HalfPainter(share))
    assert summary["samples"] == accepted
    reasons = summary["inspection"]["rejected_by_reason"]
    assert sum(reasons.values()) == 12 - accepted and set(reasons) <= {"invisible", "low_change"}
    for side in sidecars(out, rejected=not accepted):
        if accepted:
            assert side["visible_fraction"] == 1.0
        else:  # a tenth of the columns (none of a narrow bar's), plus about a pixel of blur
            assert side["visible_fraction"] < 0.5 and ("visible fraction" in side["reason"]
                                                       or "min_change" in side["reason"])


def test_labels_can_be_the_requested_mask_when_asked(ref_root, tmp_path):
    out = tmp_path / "asis"
    summary = generate(ref_root, out, factory=lambda cfg, device: HalfPainter(0.2), label_from_change=False)
    assert summary["samples"] == 12
    for side in sidecars(out):
        exported = np.asarray(Image.open(out / "masks" / f"{side['slot']:06d}.png")) > 0
        np.testing.assert_array_equal(exported, mask_util.decode(side["requested_mask_rle"]).astype(bool))


def test_inspection_summary_by_hand():
    accepted = [{"visible_fraction": 0.9, "exported_visible_fraction": 1.0, "off_fabric_fraction": 0.0,
                 "requested_off_fabric": 0.0, "placement": {"rejected_positions": 2, "fabric_match": True}},
                {"visible_fraction": 0.7, "exported_visible_fraction": 1.0, "off_fabric_fraction": 0.1,
                 "requested_off_fabric": 0.1}]
    rejected = [{"visible_fraction": 0.1, "reject_code": "invisible", "placement": {"clean_retries": 1}}]
    s = inspection_summary(accepted, rejected)
    assert s["rejected_by_reason"] == {"invisible": 1} and s["accepted_over_5pct_off_fabric"] == 1
    assert s["visible_fraction_requested"]["median"] == pytest.approx(0.7)
    assert s["placement_rejected_positions"] == 2 and s["placement_clean_retries"] == 1
    assert s["fabric_matched"] == 1 and s["placed"] == 2


def test_copy_paste_lands_the_reference_exactly_as_place_on_fabric_placed_its_mask():
    """For every flip/turn the placement draws (scale 1), the pasted signal equals the reference's own
    defect pixels minus its flat background, moved by `Placement.transform`: the two code paths agree."""
    from types import SimpleNamespace

    from defectfill.data.placement import place_on_fabric
    from defectfill.generators import PlacedMask
    from gan_baselines.copy_paste import CopyPasteConfig, CopyPasteGenerator

    h, w = 64, 256
    image, mask = np.full((h, w), 128, np.uint8), np.zeros((h, w), bool)
    mask[10:22, 100:104] = True
    mask[18:22, 104:112] = True
    ys, xs = np.nonzero(mask)
    image[ys, xs] = (20 + 2 * np.arange(len(ys))) % 100
    ref = SimpleNamespace(id="r", defect_type="bar", image=np.repeat(image[..., None], 3, axis=2), mask=mask)
    gen = CopyPasteGenerator(CopyPasteConfig(data_dir="unused"))
    turns = set()
    for seed in range(40):
        placed = place_on_fabric([mask], h, w, np.random.default_rng(seed), scale_range=(1, 1))
        turns.add(placed.k)
        clean = np.full((h, w), 150, np.uint8)
        result, _ = gen.synthesize(clean, placed.mask, 0, "bar", PlacedMask(ref, placed))
        expected = clean.astype(int)
        (y, x), (th, tw) = placed.origin, placed.size
        signal = placed.transform(image[10:22, 100:112].astype(np.float32) - 128, interpolation=0)
        own = placed.mask[y:y + th, x:x + tw]
        expected[y:y + th, x:x + tw][own] += np.rint(signal[own]).astype(int)
        np.testing.assert_array_equal(result, expected)
    assert turns == {0, 1, 2, 3}
