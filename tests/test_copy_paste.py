"""The copy-paste floor baseline (gan_baselines/copy_paste/) on a hand-built reference set:
flat gray 64x256 images with one flat defect each, so pasted values can be computed by hand."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from defectfill.config import GenerateConfig
from defectfill.data.datasets import load_reference_dataset
from defectfill.errors import ConfigError
from gan_baselines.copy_paste.generator import CopyPasteConfig, CopyPasteGenerator

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 256
REF_BG = 128
# id: (class, defect value, (y0, x0, h, w))
REFS = {
    "hole_a": ("hole", 40, (20, 100, 6, 10)),
    "hole_b": ("hole", 90, (30, 50, 6, 10)),
    "spot_a": ("spot", 230, (10, 200, 4, 4)),
}
CLEAN = 150


def rect_mask(y0, x0, h, w, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def distance_to(mask: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask)


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refs") / "data"
    for sub in ("images", "masks", "good"):
        (root / sub).mkdir(parents=True)
    for ident, (_, value, box) in REFS.items():
        image = np.full((H, W), REF_BG, np.uint8)
        mask = rect_mask(*box)
        image[mask] = value
        Image.fromarray(image).save(root / "images" / f"{ident}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{ident}.png")
    rng = np.random.default_rng(0)
    for i in range(2):  # clean images for run_generation: textured around CLEAN
        Image.fromarray(rng.integers(CLEAN - 10, CLEAN + 11, (H, W)).astype(np.uint8)).save(root / "good" / f"g{i}.png")
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "defect_type"])
        writer.writerows([ident, cls] for ident, (cls, _, _) in REFS.items())
    return root


@pytest.fixture(scope="module")
def dataset(ref_root):
    return load_reference_dataset(ref_root)


def generator(dataset, **kw) -> CopyPasteGenerator:
    """The generator with the alpha blend unless told otherwise (most hand-computed cases are alpha's)."""
    kw.setdefault("blend", "alpha")
    return CopyPasteGenerator(CopyPasteConfig(data_dir=str(dataset.root), **kw), dataset=dataset)


def flat_clean() -> np.ndarray:
    return np.full((H, W), CLEAN, np.uint8)


def textured_clean(seed=1) -> np.ndarray:
    return np.random.default_rng(seed).integers(CLEAN - 10, CLEAN + 11, (H, W)).astype(np.uint8)


def expected_value(ref_id: str) -> int:
    """Alpha mode keeps the defect's contrast to its surround: value − 128 + 150."""
    return REFS[ref_id][1] - REF_BG + CLEAN


# ---- alpha blend ----

def test_alpha_paste_of_a_same_size_defect_is_exact(dataset):
    target = rect_mask(40, 30, 6, 10)
    result, info = generator(dataset).synthesize(flat_clean(), target, seed=0, defect_class="hole")
    expected = flat_clean()
    expected[target] = expected_value(info["reference_id"])  # 62 or 112; the band blends 150 with 150
    np.testing.assert_array_equal(result, expected)
    assert info["blend"] == "alpha" and info["reference_class"] == "hole"
    assert info["bbox_xyxy"] == [30, 40, 40, 46]
    y0, x0, h, w = REFS[info["reference_id"]][2]
    assert info["reference_bbox_xyxy"] == [x0, y0, x0 + w, y0 + h]


def test_resized_paste_is_dark_inside_and_background_is_bit_identical(dataset):
    clean = textured_clean()
    target = rect_mask(22, 60, 12, 20)  # the 6x10 defect, twice as large
    seed = next(s for s in range(50) if generator(dataset).pick_reference("hole", s).id == "hole_a")
    result, info = generator(dataset).synthesize(clean, target, seed=seed, defect_class="hole")
    assert info["reference_id"] == "hole_a"
    assert result.dtype == np.uint8 and result.shape == (H, W)
    interior = ndimage.binary_erosion(target, iterations=1)  # the edge row/column mixes in background
    ring_mean = clean[(distance_to(target) > 0) & (distance_to(target) <= 8)].mean()
    assert abs(result[interior].mean() - (40 - REF_BG + ring_mean)) < 1.0  # ≈ 62: contrast survives
    # bilinear upscaling mixes the reference background into the edge (¾·40 + ¼·128 on a side, 9/16 · 40 +
    # 7/16 · 128 in a corner), so the edge is lighter but still far below the clean texture (140..160)
    assert (result[target] < clean[target] - 25).all()
    far = distance_to(target) > 8
    np.testing.assert_array_equal(result[far], clean[far])


@pytest.mark.parametrize("feather, dilation", [(2, 8), (10, 3), (0, 8)])
def test_feather_is_a_linear_alpha_ramp_capped_at_dilation(dataset, feather, dilation):
    """Same-size paste on a textured clean image: outside the mask the pasted value is the reference
    background shifted to the clean surround mean (128 − 128 + m), so each band pixel must be
    rint(a·m + (1 − a)·clean) with a = 1 − d/(f + 1) for d <= f = min(feather, dilation), else clean."""
    clean, target = textured_clean(), rect_mask(22, 60, 6, 10)
    result, _ = generator(dataset, feather=feather, dilation=dilation).synthesize(clean, target, 0, "hole")
    d = distance_to(target)
    m = clean[(d > 0) & (d <= dilation)].astype(float).mean()  # the surround: `dilation` px
    f = min(feather, dilation)
    a = np.clip(1 - d / (f + 1), 0, 1) * (d <= f)
    expected = np.rint(a * m + (1 - a) * clean)
    outside = ~target
    assert np.abs(result[outside] - expected[outside]).max() <= 1  # float32 vs float64 rounding
    np.testing.assert_array_equal(result[d > f], clean[d > f])
    if f:
        assert (result[(d > 0) & (d <= f)] != clean[(d > 0) & (d <= f)]).mean() > 0.5  # the ramp is used


def test_rgb_in_rgb_out_and_contrast_per_channel(dataset):
    clean = np.stack([flat_clean(), flat_clean() - 50, flat_clean() + 50], axis=2)  # 150, 100, 200
    target = rect_mask(40, 30, 6, 10)
    result, info = generator(dataset).synthesize(clean, target, seed=0, defect_class="hole")
    assert result.shape == (H, W, 3) and result.dtype == np.uint8
    shift = REFS[info["reference_id"]][1] - REF_BG
    np.testing.assert_array_equal(result[target], np.broadcast_to([150 + shift, 100 + shift, 200 + shift], (60, 3)))
    np.testing.assert_array_equal(result[~target], clean[~target])


def test_bright_defect_class_stays_bright(dataset):
    target = rect_mask(5, 5, 4, 4)
    result, info = generator(dataset).synthesize(flat_clean(), target, seed=7, defect_class="spot")
    assert info["reference_id"] == "spot_a"
    assert (result[target] == 230 - REF_BG + CLEAN).all()  # 252


# ---- contrast transfer (the default) and the placed reference ----

def test_contrast_is_the_default_blend():
    assert CopyPasteConfig().blend == "contrast"
    assert CopyPasteGenerator.from_init_args(shipped_init_args()).cfg.blend == "contrast"


def test_contrast_transfer_adds_the_defects_own_signal_to_textured_fabric(dataset):
    """The reference is flat 128 with a flat 40 defect, so its signal is exactly -88 (Telea fills a flat
    surround with 128): every mask pixel becomes clean - 88, every other pixel stays as it was."""
    clean, target = textured_clean(), rect_mask(22, 60, 6, 10)
    seed = next(s for s in range(50) if generator(dataset).pick_reference("hole", s).id == "hole_a")
    result, info = generator(dataset, blend="contrast").synthesize(clean, target, seed, "hole")
    assert info["reference_id"] == "hole_a" and not info["placed_reference"]
    np.testing.assert_array_equal(result[target], clean[target].astype(int) - 88)
    np.testing.assert_array_equal(result[~target], clean[~target])


def test_the_placed_reference_defect_is_pasted_where_its_mask_was_placed(tmp_path):
    """A reference with an L-shaped defect whose pixels all differ (so any misalignment shows), placed
    flipped left-right and turned a quarter: the pasted pixels are the reference's own defect pixels,
    transformed with numpy (flip, rot90) by hand, minus its background, on the placed mask only."""
    from types import SimpleNamespace

    from defectfill.generators import PlacedMask
    from gan_baselines.copy_paste.model import Fit

    image = np.full((H, W), REF_BG, np.uint8)
    mask = np.zeros((H, W), bool)
    mask[10:22, 100:104] = True  # the L: a vertical bar ...
    mask[18:22, 104:112] = True  # ... and its foot
    ys, xs = np.nonzero(mask)
    image[ys, xs] = (20 + 2 * np.arange(len(ys))) % 100  # 20, 22, ..., all below the background
    ref = SimpleNamespace(id="ell", defect_type="hole", image=np.repeat(image[..., None], 3, axis=2), mask=mask)
    crop_img, crop_mask = image[10:22, 100:112].astype(int), mask[10:22, 100:112]
    turned_img, turned_mask = np.rot90(crop_img[:, ::-1]), np.rot90(crop_mask[:, ::-1])  # 12 x 12
    origin = (30, 150)
    placed = np.zeros((H, W), bool)
    placed[30:42, 150:162] = turned_mask
    fit = Fit(flip_h=True, flip_v=False, k=1, size=turned_mask.shape, origin=origin)
    clean = textured_clean(3)
    gen = CopyPasteGenerator(CopyPasteConfig(data_dir=str(tmp_path)))  # never reads data_dir: the placement names the defect
    result, info = gen.synthesize(clean, placed, seed=0, defect_class="hole",
                                  placement=PlacedMask(ref, SimpleNamespace(**vars(fit), mask=placed)))
    expected = clean.astype(int)
    window = expected[30:42, 150:162]
    window[turned_mask] = np.clip(window[turned_mask] + turned_img[turned_mask] - REF_BG, 0, 255)
    np.testing.assert_array_equal(result, expected)
    assert info["reference_id"] == "ell" and info["placed_reference"]


# ---- poisson blend ----

def test_poisson_keeps_contrast_and_background(dataset):
    clean, target = textured_clean(), rect_mask(22, 60, 12, 20)
    gen = generator(dataset, blend="poisson")
    result, info = gen.synthesize(clean, target, seed=3, defect_class="hole")
    assert info["blend"] == "poisson"
    assert result.shape == (H, W) and result.dtype == np.uint8
    interior = ndimage.binary_erosion(target, iterations=1)
    contrast = REFS[info["reference_id"]][1] - REF_BG  # -88 or -38
    assert abs((result[interior].astype(float) - clean[target].mean()).mean() - contrast) < 8
    far = distance_to(target) > gen.dilation
    np.testing.assert_array_equal(result[far], clean[far])


def test_poisson_on_flat_images_and_at_the_image_edge(dataset):
    gen = generator(dataset, blend="poisson")
    target = rect_mask(0, 0, 6, 10)  # touches the top-left corner
    result, info = gen.synthesize(flat_clean(), target, seed=0, defect_class="hole")
    assert abs(result[target].astype(float).mean() - expected_value(info["reference_id"])) < 3
    d = distance_to(target)
    assert (np.abs(result[(d > 0)].astype(int) - CLEAN) <= 2).all()  # seamless: the surround barely moves
    np.testing.assert_array_equal(result[d > 8], flat_clean()[d > 8])


def test_poisson_needs_a_wide_enough_band():
    with pytest.raises(ConfigError, match="dilation >= 6"):
        CopyPasteConfig(blend="poisson", dilation=4).validate()
    with pytest.raises(ConfigError, match="blend"):
        CopyPasteConfig(blend="median").validate()


# ---- randomness, classes, inputs ----

def test_deterministic_by_seed_and_the_seed_picks_the_reference(dataset):
    gen, clean, target = generator(dataset), textured_clean(), rect_mask(40, 30, 6, 10)
    a, info_a = gen.synthesize(clean, target, seed=5, defect_class="hole")
    b, info_b = gen.synthesize(clean, target, seed=5, defect_class="hole")
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b
    picked = set()
    for seed in range(12):
        result, info = gen.synthesize(flat_clean(), target, seed=seed, defect_class="hole")
        picked.add(info["reference_id"])
        assert (result[target] == expected_value(info["reference_id"])).all()  # info names the pasted defect
    assert picked == {"hole_a", "hole_b"}


def test_unknown_class_names_it_and_the_available_ones(dataset):
    with pytest.raises(ValueError, match=r"'scratch'.*available: hole, spot"):
        generator(dataset).synthesize(flat_clean(), rect_mask(5, 5, 4, 4), seed=0, defect_class="scratch")
    _, info = generator(dataset).synthesize(flat_clean(), rect_mask(5, 5, 4, 4), seed=0, defect_class=None)
    assert info["reference_id"] in REFS  # None: any class
    restricted = generator(dataset, defect_types=["spot"])
    with pytest.raises(ValueError, match=r"available: spot\)"):
        restricted.synthesize(flat_clean(), rect_mask(5, 5, 4, 4), seed=0, defect_class="hole")


def test_bad_inputs_raise(dataset):
    gen = generator(dataset)
    with pytest.raises(ValueError, match="empty"):
        gen.synthesize(flat_clean(), np.zeros((H, W), bool), 0, "hole")
    with pytest.raises(ValueError, match="does not match"):
        gen.synthesize(flat_clean(), np.ones((H, W - 1), bool), 0, "hole")
    with pytest.raises(ValueError, match="uint8"):
        gen.synthesize(flat_clean().astype(np.float32), rect_mask(5, 5, 4, 4), 0, "hole")


# ---- fit / from_checkpoint / metadata / config ----

def test_fit_then_from_checkpoint_round_trip(dataset, tmp_path):
    gen = generator(dataset, blend="alpha", feather=2)
    final = gen.fit(dataset, tmp_path / "run")
    assert final == tmp_path / "run" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["config.yaml", "run_info.json"]  # no weights
    saved = yaml.safe_load((final / "config.yaml").read_text())
    assert saved["baseline"] == "copy_paste" and saved["data_dir"] == str(Path(dataset.root).resolve())
    assert saved["defect_types"] == ["hole", "spot"]  # the fitted classes, so the reloaded pool is the same
    info = json.loads((final / "run_info.json").read_text())
    assert info["config"]["feather"] == 2 and "no learned weights" in info["weights"]
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["final_dir"] == str(final)

    loaded = CopyPasteGenerator.from_checkpoint(final)
    assert loaded.cfg == gen.cfg and loaded.dilation == 8 and loaded.preserves_background
    clean, target = textured_clean(), rect_mask(22, 60, 12, 20)
    np.testing.assert_array_equal(loaded.synthesize(clean, target, 4, "hole")[0],
                                  gen.synthesize(clean, target, 4, "hole")[0])
    meta = loaded.metadata()
    assert meta["generator"] == "copy_paste" and meta["data_dir"] == saved["data_dir"]
    assert meta["learned_weights"] is False and "no learned weights" in meta["weights"]
    json.dumps(meta)  # goes into every sidecar
    assert CopyPasteGenerator.from_checkpoint(tmp_path / "run").cfg == gen.cfg  # the run folder works too
    assert CopyPasteGenerator.from_checkpoint(final, blend="poisson").cfg.blend == "poisson"  # generator_args


def test_from_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "missing" / "config.yaml")):
        CopyPasteGenerator.from_checkpoint(tmp_path / "missing")
    with pytest.raises(ConfigError, match="checkpoint"):
        CopyPasteGenerator.from_checkpoint(None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.yaml").write_text("blend: alpha\ncolour: red\n")
    with pytest.raises(ConfigError, match=r"bad/config.yaml: unknown key\(s\) colour"):
        CopyPasteGenerator.from_checkpoint(tmp_path / "bad")
    (tmp_path / "bad" / "config.yaml").write_text("baseline: dgt\n")
    with pytest.raises(ConfigError, match="dgt"):
        CopyPasteGenerator.from_checkpoint(tmp_path / "bad")


def shipped_init_args() -> dict:
    """The init_args of configs/generators/copy_paste.yaml."""
    spec = yaml.safe_load((REPO / "configs" / "generators" / "copy_paste.yaml").read_text())
    assert spec["class_path"] == "copy_paste"
    return spec["init_args"]


def test_shipped_config_loads_with_the_defaults():
    assert CopyPasteGenerator.from_init_args(shipped_init_args()).cfg == CopyPasteConfig()
    with pytest.raises(ConfigError, match=r"copy_paste: init_args.config \(configs/gan/copy_paste.yaml\) is no "
                                          r"longer read: write that file's keys inline under init_args"):
        CopyPasteGenerator.from_init_args({"config": "configs/gan/copy_paste.yaml"})


def test_alias_and_build_generator(dataset, tmp_path):
    from defectfill.generators import build_generator, import_class

    assert import_class("copy_paste") is CopyPasteGenerator
    final = generator(dataset).fit(dataset, tmp_path / "run")
    cfg = GenerateConfig(generator="copy_paste", checkpoint=str(final), clean_dir="x", dilation=11,
                         generator_args={"feather": 1})
    built = build_generator(cfg)
    assert isinstance(built, CopyPasteGenerator) and built.cfg.feather == 1
    assert built.dilation == built.cfg.dilation == 11  # the generation run's band
    cfg.generator_args = {"colour": "red"}
    with pytest.raises(ConfigError, match="generator_args: unknown key"):
        build_generator(cfg)


# ---- end to end through the shared writer ----

def test_run_generation_with_copy_paste_exports_a_labelled_dataset(ref_root, dataset, tmp_path):
    from defectfill.generation.run import run_generation

    final = generator(dataset).fit(dataset, tmp_path / "fit")
    out = tmp_path / "generated"
    cfg = GenerateConfig(generator="copy_paste", checkpoint=str(final), clean_dir=str(ref_root / "good"),
                         masks="auto", reference_dir=str(ref_root), num_samples=3, min_change=0.0,
                         output_dir=str(out))
    summary = run_generation(cfg)
    assert summary["samples"] == 3
    for name in ("data.yaml", "annotations.json", "contact_sheet.png"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["000000.png", "000001.png", "000002.png"]
    assert yaml.safe_load((out / "data.yaml").read_text())["names"] == {0: "hole", 1: "spot"}
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 3 and len(coco["annotations"]) >= 3
    for name in ("000000", "000001", "000002"):
        sidecar = json.loads((out / "sidecars" / f"{name}.json").read_text())
        assert sidecar["generator"] == "copy_paste" and sidecar["learned_weights"] is False
        assert REFS[sidecar["reference_id"]][0] == sidecar["defect_class"]
        image = np.asarray(Image.open(out / "images" / f"{name}.png"))
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png")) > 0
        clean = np.asarray(Image.open(sidecar["source_image"]))
        assert image.ndim == 2  # grayscale in, grayscale out
        far = distance_to(mask) > 8
        np.testing.assert_array_equal(image[far], clean[far])
        assert sidecar["in_mask_change"] > 20  # every reference defect is ≥ 38 levels off its background


# ---- real data ----

def test_copy_paste_on_an_aitex_good_tile(aitex_root):
    from defectfill.data.placement import place_reference_mask

    dataset = load_reference_dataset(aitex_root, defect_types=["nep", "fuzzyball"])
    tiles = sorted((aitex_root / "tiles" / "good").glob("*.png"))
    if not tiles:
        pytest.skip(f"no good tiles under {aitex_root / 'tiles' / 'good'}")
    clean = next((a for a in (np.asarray(Image.open(p)) for p in tiles) if 60 < a.mean() < 180), None)
    assert clean is not None, "every AITEX good tile is saturated?"
    gen = CopyPasteGenerator(CopyPasteConfig(data_dir=str(aitex_root), defect_types=["nep", "fuzzyball"]),
                             dataset=dataset)
    rng = np.random.default_rng(0)
    for blend in ("alpha", "poisson"):
        gen.cfg.blend = blend
        for cls in ("nep", "fuzzyball"):
            mask = place_reference_mask([s.mask for s in dataset.samples if s.defect_type == cls], *clean.shape, rng,
                                        allow_rotation=False)
            result, info = gen.synthesize(clean, mask, seed=11, defect_class=cls)
            assert result.shape == clean.shape and result.dtype == np.uint8
            assert info["reference_class"] == cls and info["reference_id"].split("_")[1] in ("019", "030")
            far = distance_to(mask) > gen.dilation
            np.testing.assert_array_equal(result[far], clean[far])
            change = np.abs(result.astype(int) - clean)[mask].mean()
            assert change > 5, (blend, cls, change)


def test_command_line_fit(ref_root, tmp_path, capsys):
    """`defectfill fit` of the shipped copy-paste config: the run folder loads with the --set value."""
    from defectfill.cli import main

    config = REPO / "configs" / "generators" / "copy_paste.yaml"
    assert main(["fit", "--config", str(config), "--data-dir", str(ref_root), "--output-dir", str(tmp_path / "run"),
                 "--set", "blend=poisson"]) == 0
    printed = capsys.readouterr().out.split("checkpoint:")[-1].strip()
    assert CopyPasteGenerator.from_checkpoint(printed).cfg.blend == "poisson"
    bad = ["fit", "--config", str(config), "--output-dir", str(tmp_path / "bad"), "--data-dir", f"{tmp_path}/none"]
    assert main(bad) == 2
    assert f"{tmp_path}/none" in capsys.readouterr().err
