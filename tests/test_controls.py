"""The realism-free control generators (gan_baselines/controls/generator.py): `shade` (one seeded constant on
the mask) and `noise_blob` (DRAEM-style Perlin noise in the mask), checked against hand-computed
expectations on flat grey images."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_util
from scipy import ndimage

from defectfill.config import GenerateConfig
from defectfill.errors import ConfigError
from defectfill.generators import build_generator, build_unfitted, import_class
from gan_baselines.controls.generator import (
    ControlConfig,
    NoiseBlobConfig,
    NoiseBlobGenerator,
    ShadeGenerator,
    perlin_noise,
)

REPO = Path(__file__).resolve().parents[1]
H, W = 64, 96
GREY = 128  # far from 0 and 255: no change of at most 40 levels is clipped


def rect_mask(y0=20, x0=30, h=12, w=30) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def blob_mask() -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - 32) ** 2 / 14 ** 2 + (xx - 48) ** 2 / 30 ** 2 <= 1


def flat(value=GREY, rgb=False) -> np.ndarray:
    return np.full((H, W, 3) if rgb else (H, W), value, np.uint8)


def change(result: np.ndarray, clean: np.ndarray) -> np.ndarray:
    return result.astype(np.int64) - clean.astype(np.int64)


def distance_to(mask: np.ndarray) -> np.ndarray:
    return ndimage.distance_transform_edt(~mask)


# ---- shade ----

@pytest.mark.parametrize("seed", range(6))
def test_shade_shifts_every_mask_pixel_by_one_constant_and_nothing_else(seed):
    clean = np.random.default_rng(seed).integers(60, 190, (H, W)).astype(np.uint8)  # textured, never clipped
    mask = rect_mask()
    result, info = ShadeGenerator(ControlConfig(feather=0)).synthesize(clean, mask, seed)
    diff = change(result, clean)
    assert np.unique(diff[mask]).size == 1  # the very same constant on every mask pixel
    shift = int(diff[mask][0])
    assert 15 <= abs(shift) <= 40
    assert shift == round(info["shift"]) and info["amplitude"] == pytest.approx(abs(info["shift"]))
    assert info["control"] is True and info["generator"] == "shade"
    np.testing.assert_array_equal(result[~mask], clean[~mask])  # feather 0: background bit-identical
    assert result.dtype == np.uint8 and result.shape == clean.shape


def test_shade_sign_varies_across_seeds():
    mask = rect_mask()
    shifts = [ShadeGenerator().synthesize(flat(), mask, seed)[1]["shift"] for seed in range(20)]
    assert any(s > 0 for s in shifts) and any(s < 0 for s in shifts)
    assert len({round(abs(s), 6) for s in shifts}) > 10  # the magnitude is drawn too


def test_shade_feather_ring_lies_between_and_beyond_it_is_bit_identical():
    mask = rect_mask()
    gen = ShadeGenerator(ControlConfig(feather=1.5))
    assert gen.dilation == 2 and gen.preserves_background and not gen.class_conditional
    result, info = gen.synthesize(flat(), mask, 3)
    diff, d = change(result, flat()), distance_to(mask)
    shift = info["shift"]
    assert np.all(diff[mask] == round(shift))
    ring = (d > 0) & (d <= 1.5)
    # alpha = 1 - d / (feather + 1): 0.6 at 1 px, 1 - sqrt(2)/2.5 on the diagonal
    np.testing.assert_array_equal(diff[ring], np.rint(GREY + (1 - d[ring] / 2.5) * shift) - GREY)
    assert np.all(np.abs(diff[ring]) < abs(round(shift))) and np.all(np.abs(diff[ring]) > 0)
    assert np.all(np.sign(diff[ring]) == np.sign(shift))
    np.testing.assert_array_equal(result[d > 1.5], flat()[d > 1.5])


def test_shade_rgb_gets_the_same_shift_on_every_channel_and_clips():
    mask = rect_mask()
    clean = np.dstack([flat(50), flat(128), flat(250)])
    result, info = ShadeGenerator(ControlConfig(feather=0)).synthesize(clean, mask, 1)
    assert result.shape == clean.shape and result.dtype == np.uint8
    expected = np.clip(np.array([50, 128, 250]) + round(info["shift"]), 0, 255)
    assert np.all(result[mask] == expected)
    np.testing.assert_array_equal(result[~mask], clean[~mask])


# ---- noise_blob ----

@pytest.mark.parametrize("seed", range(5))
def test_noise_blob_is_a_textured_two_signed_change_with_the_drawn_peak(seed):
    mask = blob_mask()
    gen = NoiseBlobGenerator()
    result, info = gen.synthesize(flat(), mask, seed)
    diff, d = change(result, flat()), distance_to(mask)
    inside = diff[mask]
    assert 15 - 1 <= np.abs(inside).max() <= 40 + 1
    assert np.abs(inside).max() == pytest.approx(info["amplitude"], abs=0.5)  # normalised to max-abs 1 x peak
    assert (inside > 0).any() and (inside < 0).any()  # zero-mean texture: both signs
    assert inside.std() > 3 and np.unique(inside).size > 10  # a texture, not a constant
    assert abs(inside.mean()) < 1  # zero mean inside the mask (up to rounding)
    assert np.abs(diff).max() <= info["amplitude"] + 0.5  # the feather ring never exceeds the peak
    assert np.all(diff[d > gen.dilation] == 0)
    assert info["control"] is True and info["noise"] == "perlin"


def test_noise_blob_rgb_and_a_one_pixel_mask():
    mask = rect_mask()
    gray, _ = NoiseBlobGenerator().synthesize(flat(), mask, 4)
    rgb, _ = NoiseBlobGenerator().synthesize(flat(rgb=True), mask, 4)
    assert rgb.shape == (H, W, 3) and rgb.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)  # same change on every channel
    dot = np.zeros((H, W), bool)
    dot[10, 10] = True
    result, info = NoiseBlobGenerator(NoiseBlobConfig(feather=0)).synthesize(flat(), dot, 2)
    assert abs(int(result[10, 10]) - GREY) == round(info["amplitude"])  # degenerate: a constant ±peak
    assert np.count_nonzero(result != GREY) == 1


@pytest.mark.parametrize("cls", [ShadeGenerator, NoiseBlobGenerator])
def test_deterministic_in_clean_mask_seed(cls):
    mask, clean = blob_mask(), np.random.default_rng(0).integers(0, 256, (H, W)).astype(np.uint8)
    a, info_a = cls().synthesize(clean, mask, 7)
    b, info_b = cls().synthesize(clean.copy(), mask.copy(), 7)
    c, _ = cls().synthesize(clean, mask, 8)
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("cls", [ShadeGenerator, NoiseBlobGenerator])
def test_bad_inputs_raise(cls):
    with pytest.raises(ValueError, match="empty"):
        cls().synthesize(flat(), np.zeros((H, W), bool), 0)
    with pytest.raises(ValueError, match="uint8"):
        cls().synthesize(flat().astype(np.float32), rect_mask(), 0)


# ---- perlin noise ----

def test_perlin_noise_shape_mean_bounds_and_spatial_correlation():
    rng = np.random.default_rng(0)
    noise = perlin_noise((128, 160), rng, octaves=3, base_scale=16.0)
    assert noise.shape == (128, 160) and noise.dtype == np.float64
    assert np.abs(noise).max() <= np.sqrt(0.5) + 1e-9
    assert abs(noise.mean()) < 0.05 and noise.std() > 0.05

    def lag_corr(lag):
        return np.corrcoef(noise[:, :-lag].ravel(), noise[:, lag:].ravel())[0, 1]

    assert lag_corr(1) > 0.8  # smooth at the pixel scale
    assert abs(lag_corr(64)) < 0.3 and lag_corr(1) > lag_corr(64) + 0.5  # decorrelated beyond the lattice
    np.testing.assert_array_equal(perlin_noise((128, 160), np.random.default_rng(0)), noise)
    assert not np.array_equal(perlin_noise((128, 160), np.random.default_rng(1)), noise)
    with pytest.raises(ValueError):
        perlin_noise((8, 8), rng, octaves=4, base_scale=4.0)  # finest lattice 0.5 px


# ---- registry, configs, fit / from_checkpoint ----

def test_registry_builds_and_bad_init_args_name_the_key():
    gen = build_unfitted("shade", {"amplitude": [20, 30], "feather": 0})
    assert isinstance(gen, ShadeGenerator) and gen.cfg.amplitude == [20.0, 30.0] and gen.dilation == 0
    assert import_class("noise_blob") is NoiseBlobGenerator
    assert isinstance(build_unfitted("noise_blob", {"octaves": 2}), NoiseBlobGenerator)
    for alias, args, word in [("shade", {"amplitud": [1, 2]}, "amplitud"),
                              ("shade", {"amplitude": [40, 15]}, "amplitude"),
                              ("shade", {"amplitude": [0, 15]}, "amplitude"),
                              ("shade", {"amplitude": [15, 300]}, "amplitude"),
                              ("shade", {"amplitude": "big"}, "amplitude"),
                              ("shade", {"feather": -1}, "feather"),
                              ("shade", {"octaves": 3}, "octaves"),  # a noise_blob key
                              ("noise_blob", {"octaves": 0}, "octaves"),
                              ("noise_blob", {"octaves": 5, "base_scale": 8}, "base_scale")]:
        with pytest.raises(ConfigError, match=word):
            build_unfitted(alias, args)


@pytest.mark.parametrize("name", ["shade", "noise_blob"])
def test_shipped_config_resolves_to_the_defaults(name):
    spec = yaml.safe_load((REPO / "configs" / "generators" / f"{name}.yaml").read_text())
    gen = build_unfitted(spec["class_path"], spec["init_args"])
    assert gen.name == name and gen.cfg.amplitude == [15.0, 40.0] and gen.cfg.feather == 1.5 and gen.dilation == 2


@pytest.mark.parametrize("cls", [ShadeGenerator, NoiseBlobGenerator])
def test_fit_then_from_checkpoint_round_trip(cls, tmp_path):
    gen = cls.from_init_args({"amplitude": [18, 22], "feather": 1})
    final = gen.fit(None, tmp_path / "run", seed=3)
    assert final == tmp_path / "run" / "final" and (final / "config.yaml").is_file()
    written = yaml.safe_load((final / "config.yaml").read_text())
    assert written["generator"] == cls.name and written["amplitude"] == [18.0, 22.0]
    loaded = cls.from_checkpoint(final)
    also = cls.from_checkpoint(tmp_path / "run")  # the run folder works too
    mask, clean = blob_mask(), flat()
    expected = gen.synthesize(clean, mask, 5)
    for other in (loaded, also):
        got = other.synthesize(clean, mask, 5)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1] == expected[1]
    meta = loaded.metadata()
    assert meta["generator"] == cls.name and meta["control"] is True and meta["learned_weights"] is False
    assert meta["checkpoint"] == str(final) and meta["settings"]["amplitude"] == [18.0, 22.0]
    wrong = NoiseBlobGenerator if cls is ShadeGenerator else ShadeGenerator
    with pytest.raises(ConfigError, match="written by generator"):
        wrong.from_checkpoint(final)
    with pytest.raises(ConfigError, match="missing"):
        cls.from_checkpoint(tmp_path / "nowhere")


def test_build_generator_caps_the_feather_at_the_runs_dilation(tmp_path):
    final = ShadeGenerator(ControlConfig(feather=3)).fit(None, tmp_path / "run")
    cfg = GenerateConfig(generator="shade", checkpoint=str(final), clean_dir="x", dilation=1,
                         generator_args={"amplitude": [30, 30]})
    built = build_generator(cfg)
    assert isinstance(built, ShadeGenerator) and built.dilation == 1 and built.cfg.amplitude == [30.0, 30.0]
    result, info = built.synthesize(flat(), rect_mask(), 0)
    assert abs(info["shift"]) == 30
    assert np.all(result[distance_to(rect_mask()) > 1] == GREY)
    cfg.generator_args = {"colour": "red"}
    with pytest.raises(ConfigError, match="generator_args: unknown key"):
        build_generator(cfg)


# ---- end to end through the shared writer ----

@pytest.mark.parametrize("name", ["shade", "noise_blob"])
def test_run_generation_writes_labelled_control_samples(name, woven_root, tmp_path):
    from defectfill.generation.run import run_generation

    final = build_unfitted(name).fit(None, tmp_path / "fit")
    out = tmp_path / "generated"
    cfg = GenerateConfig(generator=name, checkpoint=str(final), clean_dir=str(woven_root / "good"), masks="auto",
                         reference_dir=str(woven_root), num_samples=2, output_dir=str(out))
    summary = run_generation(cfg)
    assert summary["samples"] == 2
    sidecars = sorted((out / "sidecars").glob("*.json"))
    assert len(sidecars) == 2
    for path in sidecars:
        side = json.loads(path.read_text())
        assert side["generator"] == name and side["control"] is True and 15 <= side["amplitude"] <= 40
        image = np.asarray(Image.open(out / "images" / f"{path.stem}.png"))
        clean = np.asarray(Image.open(side["source_image"]))
        label = np.asarray(Image.open(out / "masks" / f"{path.stem}.png")) > 0
        requested = mask_util.decode(side["requested_mask_rle"]).astype(bool)
        assert label.any() and not (label & ~requested).any()
        assert (out / "labels" / f"{path.stem}.txt").read_text().strip()  # a non-empty YOLO label
        assert image.shape == clean.shape and image.dtype == np.uint8
        far = distance_to(requested) > 2  # ceil(feather 1.5)
        np.testing.assert_array_equal(image[far], clean[far])
        assert side["in_mask_change"] > 2
