"""Fabric region of a clean image (off-fabric white, flat areas) and user ROI masks."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from defectfill.data.fabric import fabric_mask, load_roi, off_fabric_fraction, valid_region
from defectfill.errors import DataError

BAND = slice(0, 150)  # columns of saturated white
PATCH = (slice(60, 160), slice(600, 700))  # a flat constant-grey patch


def aitex_like(height=256, width=1024, seed=0):
    """Woven-like texture (threads + noise, grey ~100-160), a white band at the left end, a flat patch.

    Returns (uint8 image, bool truth of the off-fabric pixels).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    threads = 18 * np.sin(2 * np.pi * xx / 6) * np.sin(2 * np.pi * yy / 5) + 8 * np.sin(2 * np.pi * (xx + yy) / 11)
    image = np.clip(130 + threads + rng.normal(0, 6, (height, width)), 95, 165).astype(np.uint8)
    off = np.zeros((height, width), bool)
    image[:, BAND] = 255
    image[PATCH] = 128
    off[:, BAND] = off[PATCH] = True
    return image, off


def test_band_and_flat_patch_excluded_with_margin_and_texture_kept():
    image, off = aitex_like()
    margin = 8
    fabric = fabric_mask(image, margin=margin)
    assert fabric.shape == off.shape and fabric.dtype == bool
    distance = ndimage.distance_transform_edt(~off)  # px to the nearest off-fabric pixel
    assert not fabric[off].any()
    assert not fabric[distance <= margin].any()  # the margin next to band and patch
    far = distance > margin + 2
    assert fabric[far].mean() > 0.95
    assert fabric[far].all()  # in fact everywhere on this texture


def test_margin_zero_recovers_the_off_fabric_region():
    image, off = aitex_like(seed=1)
    fabric = fabric_mask(image, margin=0)
    assert np.mean(fabric != ~off) < 0.001


def test_rgb_input_uses_luminance():
    image, _ = aitex_like(seed=2)
    rgb = np.dstack([image] * 3)
    assert np.array_equal(fabric_mask(rgb), fabric_mask(image))


def test_small_specks_and_holes_are_cleaned_but_thin_white_lines_stay_excluded():
    image, off = aitex_like(seed=3)
    image[200:203, 300:303] = 255  # a 3x3 glint on the fabric: not off-fabric
    image[:, 900:904] = 255  # a 4-px white line over the full height: off-fabric
    island = image[100:104, 50:54]  # a 4x4 textured speck inside the white band
    island[:] = np.array([[100, 160] * 2, [160, 100] * 2] * 2, np.uint8)
    fabric = fabric_mask(image, margin=0)
    assert fabric[200:203, 300:303].all()
    assert not fabric[:, 900:904].any()
    assert not fabric[:, BAND].any()


def test_bad_images():
    with pytest.raises(ValueError, match="uint8"):
        fabric_mask(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="HxW"):
        fabric_mask(np.zeros((2, 8, 8), np.uint8))


# ------------------------------------------------------------------ off-fabric fraction


def test_off_fabric_fraction_hand_computed():
    valid = np.ones((4, 5), bool)
    valid[:, 0] = False
    mask = np.zeros((4, 5), bool)
    assert off_fabric_fraction(mask, valid) == 0.0  # empty mask
    mask[0, 0:4] = True  # 1 of 4 pixels on column 0
    assert off_fabric_fraction(mask, valid) == pytest.approx(0.25)
    mask[1:3, 0] = True  # 3 of 6
    assert off_fabric_fraction(mask, valid) == pytest.approx(0.5)
    assert off_fabric_fraction(mask[:, 1:], valid[:, 1:]) == 0.0
    with pytest.raises(ValueError, match="shape"):
        off_fabric_fraction(mask, valid[:, 1:])


# ------------------------------------------------------------------ ROI


def test_load_roi_and_valid_region(tmp_path):
    image, off = aitex_like()
    roi = np.zeros(off.shape, np.uint8)
    roi[:, 512:] = 7  # any non-zero value allows
    path = tmp_path / "roi.png"
    Image.fromarray(roi).save(path)
    loaded = load_roi(path, off.shape)
    assert loaded.dtype == bool and np.array_equal(loaded, roi > 0)
    valid = valid_region(image, loaded)
    assert np.array_equal(valid, fabric_mask(image) & loaded)
    assert not valid[:, :512].any() and valid[:, 800:].any()
    assert np.array_equal(valid_region(image, margin=0), fabric_mask(image, margin=0))
    with pytest.raises(ValueError, match="roi shape"):
        valid_region(image, loaded[:, 1:])


def test_load_roi_errors_name_the_file(tmp_path):
    small = tmp_path / "small_roi.png"
    Image.fromarray(np.full((10, 20), 255, np.uint8)).save(small)
    with pytest.raises(DataError, match=r"small_roi\.png.*20x10.*30x10"):
        load_roi(small, (10, 30))
    garbage = tmp_path / "broken_roi.png"
    garbage.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken_roi\.png: cannot read ROI mask"):
        load_roi(garbage, (10, 20))
    with pytest.raises(DataError, match=r"missing_roi\.png"):
        load_roi(tmp_path / "missing_roi.png", (10, 20))


# ------------------------------------------------------------------ real AITEX


def test_real_aitex_good_images_off_fabric_fraction(aitex_root):
    good = sorted((aitex_root / "good").glob("*.png"))
    if not good:
        pytest.skip(f"no AITEX defect-free images in {aitex_root / 'good'}")
    fractions = []
    for path in good:
        with Image.open(path) as im:
            image = np.asarray(im.convert("L"))
        fractions.append(1 - fabric_mask(image).mean())
    assert 0.05 <= np.mean(fractions) <= 0.2, np.mean(fractions)  # ~0.11 measured
    assert max(fractions) <= 0.4, max(fractions)  # ~0.30 measured
