"""Contrast and texture of a defect's fill against the fabric around it (defectfill.metrics.fill)."""

import numpy as np
import pytest

from defectfill.metrics.fill import fill_statistics, summarize_fills


def weave(h=64, w=64, amplitude=20):
    """A checkerboard 'weave' around grey 100."""
    yy, xx = np.mgrid[:h, :w]
    return 100.0 + amplitude * (((yy + xx) % 2) * 2 - 1)


def square(h=64, w=64, y=22, x=22, side=20):
    mask = np.zeros((h, w), bool)
    mask[y:y + side, x:x + side] = True
    return mask


def test_flat_shift_has_that_contrast():
    image = np.full((64, 64), 100.0)
    mask = square()
    image[mask] += 30
    stats = fill_statistics(image, mask)
    assert stats["contrast"] == pytest.approx(30.0)
    image[mask] -= 60
    assert fill_statistics(image, mask)["contrast"] == pytest.approx(-30.0)


def test_the_same_weave_inside_is_ratio_one_and_a_smooth_fill_is_near_zero():
    image, mask = weave(), square()
    stats = fill_statistics(image, mask)
    assert stats["contrast"] == pytest.approx(0.0, abs=0.3)  # the ring holds slightly more of one phase
    assert stats["texture_ratio"] == pytest.approx(1.0, abs=0.02)
    smooth = image.copy()
    smooth[mask] = 100.0
    # only the fill's border pixels see the weave through the Laplacian: 76 of 400 mask pixels
    assert fill_statistics(smooth, mask)["texture_ratio"] < 0.5


def test_rgb_empty_and_size_mismatch():
    image, mask = weave(), square()
    rgb = np.repeat(image[..., None], 3, axis=2)
    assert fill_statistics(rgb, mask) == fill_statistics(image, mask)
    assert fill_statistics(image, np.zeros_like(mask)) is None
    assert fill_statistics(image, np.ones_like(mask)) is None  # no fabric left for the ring
    with pytest.raises(ValueError, match="differ in size"):
        fill_statistics(image, mask[:10])


def test_summary_medians():
    rows = [{"contrast": c, "texture_ratio": r, "texture_in": 0, "texture_ring": 1}
            for c, r in [(-10, 0.2), (20, 0.4), (30, 0.6)]] + [None]
    s = summarize_fills(rows)
    assert s["n"] == 3 and s["abs_contrast_median"] == 20 and s["texture_ratio_median"] == 0.4
    assert summarize_fills([None]) == {"n": 0}
