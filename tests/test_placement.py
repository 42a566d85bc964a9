"""Realistic mask placement for ``--masks auto`` (reference defect shapes, re-placed)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from scipy import ndimage

from defectfill.data.datasets import ReferenceDataset, ReferenceSample
from defectfill.data.fabric import fabric_mask
from defectfill.data.placement import (
    NoFabricPlacement,
    auto_masks_for,
    crop_to_bbox,
    place_on_fabric,
    place_reference_mask,
    resize_mask,
)

EIGHT = np.ones((3, 3), dtype=int)


def _components(mask):
    return ndimage.label(mask, structure=EIGHT)[1]


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


def _disk(radius, canvas=(120, 140), center=(50, 70)):
    yy, xx = np.mgrid[: canvas[0], : canvas[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def _l_shape():
    """An asymmetric shape: its 8 flips/rotations are all different."""
    m = np.zeros((60, 80), dtype=bool)
    m[10:40, 20:26] = True  # vertical bar
    m[34:40, 26:50] = True  # foot to the right
    m[10:14, 26:32] = True  # small nub at the top
    return m


def _dihedral(shape):
    """The 8 flips/rotations of a 2-D array, built from transposes and reversals."""
    variants = []
    for t in (shape, shape.T):
        for rows in (slice(None), slice(None, None, -1)):
            for cols in (slice(None), slice(None, None, -1)):
                variants.append(t[rows, cols])
    return variants


def _assert_inside(mask, border):
    assert mask.any()
    y0, y1, x0, x1 = _bbox(mask)
    h, w = mask.shape
    assert y0 >= border and x0 >= border and y1 <= h - border and x1 <= w - border, (y0, y1, x0, x1, h, w)


# ------------------------------------------------------------------ placement basics


@pytest.mark.parametrize("size", [(256, 256), (256, 4096), (64, 96)])
@pytest.mark.parametrize("border", [0, 8, 20])
def test_placed_mask_nonempty_and_inside_border(size, border):
    refs = [_disk(20), _l_shape()]
    for seed in range(15):
        out = place_reference_mask(refs, *size, np.random.default_rng(seed), border=border)
        assert out.shape == size and out.dtype == bool
        _assert_inside(out, border)


@pytest.mark.parametrize("scale", [0.75, 1.0, 1.25])
def test_blob_area_scales_with_square_of_scale(scale):
    radius = 20
    ref = _disk(radius)
    for seed in range(5):
        out = place_reference_mask([ref], 256, 256, np.random.default_rng(seed), scale_range=(scale, scale))
        assert out.sum() == pytest.approx(np.pi * radius**2 * scale**2, rel=0.05)
        assert _components(out) == 1


def test_scale_one_gives_a_flip_or_rotation_of_the_reference_crop():
    ref = _l_shape()
    crop = ref[10:40, 20:50]  # its bounding box, written out by hand
    variants = _dihedral(crop)
    assert len({v.tobytes() + bytes(v.shape) for v in variants}) == 8  # truly asymmetric
    seen = set()
    for seed in range(60):
        out = place_reference_mask([ref], 128, 128, np.random.default_rng(seed), scale_range=(1, 1))
        placed = crop_to_bbox(out)
        matches = [i for i, v in enumerate(variants) if v.shape == placed.shape and np.array_equal(v, placed)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))  # every flip/rotation occurs


def test_no_rotation_keeps_orientation():
    ref = _l_shape()
    crop = ref[10:40, 20:50]
    upright = _dihedral(crop)[:4]  # flips only
    for seed in range(30):
        rng = np.random.default_rng(seed)
        out = place_reference_mask([ref], 128, 128, rng, scale_range=(1, 1), allow_rotation=False)
        placed = crop_to_bbox(out)
        assert any(v.shape == placed.shape and np.array_equal(v, placed) for v in upright)


def test_rotation_only_when_rotated_box_fits():
    ref = np.zeros((50, 400), dtype=bool)
    ref[20:30, 40:340] = True  # a 10x300 horizontal streak
    for seed in range(30):  # 90-degree turn would need 300 px of height; only 84 are available
        out = place_reference_mask([ref], 100, 400, np.random.default_rng(seed), scale_range=(1, 1))
        y0, y1, x0, x1 = _bbox(out)
        assert (y1 - y0, x1 - x0) == (10, 300)


# ------------------------------------------------------------------ shrink-to-fit


def test_reference_longer_than_target_is_shrunk_to_fit():
    ref = np.zeros((256, 4096), dtype=bool)
    ref[100:103, 500:1700] = True  # a 3x1200 weft streak on an AITEX-sized mask
    for seed in range(10):
        out = place_reference_mask([ref], 256, 256, np.random.default_rng(seed), border=8, allow_rotation=False)
        _assert_inside(out, 8)
        y0, y1, x0, x1 = _bbox(out)
        assert x1 - x0 == 240  # exactly the room left by the borders
        assert y1 - y0 == 1  # 3 px * 240 / 1200 rounds to the 1 px minimum
        assert _components(out) == 1


def test_full_height_thin_line_on_aitex_sized_target_stays_connected():
    ref = np.zeros((256, 4096), dtype=bool)
    rows = np.arange(256)
    ref[rows, 2000 + rows // 40] = True  # a slightly slanted 1-px broken_end over the full height
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out = place_reference_mask([ref], 256, 4096, rng, scale_range=(1.0, 1.25), allow_rotation=False)
        _assert_inside(out, 8)
        y0, y1, _, _ = _bbox(out)
        assert y1 - y0 == 240  # shrunk to the 256 - 2*8 px available
        assert _components(out) == 1


def test_image_too_small_raises_with_sizes():
    with pytest.raises(ValueError, match=r"16x40.*8 px border"):
        place_reference_mask([_disk(5)], 16, 40, np.random.default_rng(0), border=8)
    out = place_reference_mask([_disk(30)], 17, 17, np.random.default_rng(0), border=8)  # 1 px left
    assert out.sum() == 1 and out[8, 8]


# ------------------------------------------------------------------ determinism and errors


def test_deterministic_for_a_seed():
    refs = [_disk(15), _l_shape(), _disk(8, center=(20, 20))]
    a = [place_reference_mask(refs, 256, 256, np.random.default_rng(42)) for _ in range(2)]
    assert np.array_equal(a[0], a[1])
    rng = np.random.default_rng(42)
    first, second = place_reference_mask(refs, 256, 256, rng), place_reference_mask(refs, 256, 256, rng)
    assert np.array_equal(first, a[0])
    assert not np.array_equal(first, second)


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no reference masks"):
        place_reference_mask([], 64, 64, rng)
    with pytest.raises(ValueError, match="reference mask 1 is empty"):
        place_reference_mask([_disk(5), np.zeros((10, 10), bool)], 64, 64, rng)
    with pytest.raises(ValueError, match="scale_range"):
        place_reference_mask([_disk(5)], 64, 64, rng, scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="border"):
        place_reference_mask([_disk(5)], 64, 64, rng, border=-1)


# ------------------------------------------------------------------ resizing


def test_resize_keeps_thin_diagonal_connected_and_blob_area():
    line = np.eye(200, dtype=bool)  # 1-px 8-connected diagonal
    for size in (37, 50, 100, 150, 250):
        small = resize_mask(line, size, size)
        assert small.any() and _components(small) == 1
    blob = _disk(30, canvas=(64, 64), center=(32, 32))
    assert resize_mask(blob, 32, 32).sum() == pytest.approx(np.pi * 15**2, rel=0.05)
    assert np.array_equal(resize_mask(blob, 64, 64), blob)
    dot = np.ones((1, 1), bool)
    assert resize_mask(dot, 3, 3).all()


def test_crop_to_bbox():
    m = np.zeros((10, 12), bool)
    m[2, 3] = m[5, 8] = True
    crop = crop_to_bbox(m)
    assert crop.shape == (4, 6) and crop[0, 0] and crop[-1, -1] and crop.sum() == 2
    with pytest.raises(ValueError, match="empty"):
        crop_to_bbox(np.zeros((4, 4), bool))


# ------------------------------------------------------------------ class filtering


def _dataset():
    def sample(i, kind):
        mask = np.zeros((8, 8), bool)
        mask[i % 8, i % 8] = True
        image = np.zeros((8, 8, 3), np.uint8)
        return ReferenceSample(f"{i:02d}", image, mask, kind, Path(f"images/{i}.png"), Path(f"masks/{i}.png"))

    kinds = ["hole", "stain", "hole", "thread"]
    return ReferenceDataset(Path("/data/fabric"), [sample(i, k) for i, k in enumerate(kinds)], [], False)


def test_auto_masks_for_filters_by_class():
    ds = _dataset()
    holes = auto_masks_for(ds, "hole")
    assert len(holes) == 2
    assert holes[0] is ds.samples[0].mask and holes[1] is ds.samples[2].mask
    assert len(auto_masks_for(ds, None)) == 4
    with pytest.raises(ValueError, match=r"defect class 'crease'.*available: hole, stain, thread"):
        auto_masks_for(ds, "crease")
    empty = ReferenceDataset(Path("/data/none"), [], [], False)
    with pytest.raises(ValueError, match="no reference masks"):
        auto_masks_for(empty, None)


def test_real_aitex_masks_place_on_both_target_sizes(aitex_root):
    from defectfill.data import load_reference_dataset

    ds = load_reference_dataset(aitex_root)
    rng = np.random.default_rng(0)
    for kind in ds.defect_types:
        refs = auto_masks_for(ds, kind)
        for size in ((256, 256), (256, 4096)):
            for _ in range(3):
                _assert_inside(place_reference_mask(refs, *size, rng), 8)


# ------------------------------------------------------------------ placement on fabric (valid region)


def _fabric_image(height=256, width=1024, band=200, seed=0):
    """Woven-like texture with saturated white over the first ``band`` columns; (image, band truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    texture = 130 + 18 * np.sin(2 * np.pi * xx / 6) * np.sin(2 * np.pi * yy / 5) + rng.normal(0, 6, (height, width))
    image = np.clip(texture, 95, 165).astype(np.uint8)
    image[:, :band] = 255
    white = np.zeros((height, width), bool)
    white[:, :band] = True
    return image, white


def _streak():
    m = np.zeros((40, 700), bool)
    m[18:22, 20:620] = True  # a 4x600 weft-like streak
    return m


def _allowed_origins(shape, valid, border):
    """Brute force: every top-left putting all of ``shape`` on ``valid``, inside ``border``."""
    h, w = valid.shape
    th, tw = shape.shape
    return {
        (y, x)
        for y in range(border, h - border - th + 1)
        for x in range(border, w - border - tw + 1)
        if valid[y : y + th, x : x + tw][shape].all()
    }


def test_valid_region_keeps_every_mask_pixel_off_the_white_band():
    image, white = _fabric_image()
    valid = fabric_mask(image)
    refs = [_disk(20), _l_shape(), _streak()]
    rejected = []
    for seed in range(300):
        p = place_on_fabric(refs, *image.shape, np.random.default_rng(seed), valid=valid)
        assert p.mask.any()
        assert (p.mask & white).sum() == 0
        assert not (p.mask & ~valid).any()
        _assert_inside(p.mask, 8)
        rejected.append(p.rejected_positions)
    assert max(rejected) > 0  # the band refused some uniform draws ...
    assert min(rejected) == 0  # ... and the first draw often fits


def test_valid_none_or_all_true_keeps_the_random_stream():
    # (seed, top row, left column, area) from place_reference_mask before `valid` existed
    before = [(0, 46, 809, 217), (1, 55, 307, 1884), (2, 80, 599, 230), (3, 16, 100, 360),
              (4, 106, 606, 230), (5, 217, 60, 269), (6, 99, 966, 1076), (7, 19, 303, 251),
              (8, 140, 856, 461), (9, 132, 696, 1661), (10, 187, 512, 240), (11, 109, 152, 709)]
    refs = [_disk(20), _l_shape()]
    everywhere = np.ones((256, 1024), bool)
    for seed, top, left, area in before:
        mask = place_reference_mask(refs, 256, 1024, np.random.default_rng(seed))
        ys, xs = np.nonzero(mask)
        assert (ys.min(), xs.min(), mask.sum()) == (top, left, area)
        for valid in (None, everywhere):
            p = place_on_fabric(refs, 256, 1024, np.random.default_rng(seed), valid=valid)
            assert np.array_equal(p.mask, mask) and p.rejected_positions == 0
        same = place_reference_mask(refs, 256, 1024, np.random.default_rng(seed), valid=everywhere)
        assert np.array_equal(same, mask)


def test_fallback_draws_uniformly_among_exactly_the_allowed_positions():
    square = np.zeros((30, 30), bool)
    square[5:15, 5:15] = True  # 10x10: the same under every flip and rotation
    valid = np.zeros((128, 512), bool)
    valid[40:52, 300:313] = True  # room for 3 x 4 top-left positions
    expected = {(y, x) for y in range(40, 43) for x in range(300, 304)}
    seen, rejected = {}, []
    for seed in range(300):
        p = place_on_fabric([square], 128, 512, np.random.default_rng(seed), valid=valid, scale_range=(1, 1))
        assert p.origin in expected and p.size == (10, 10)
        assert not (p.mask & ~valid).any() and p.mask.sum() == 100
        seen[p.origin] = seen.get(p.origin, 0) + 1
        rejected.append(p.rejected_positions)
    assert set(seen) == expected
    assert min(seen.values()) >= 10  # ~25 each when uniform
    assert np.mean(np.array(rejected) == 64) > 0.9  # nearly always after 64 refused draws


def _blobby_valid(seed=3, shape=(48, 64)):
    """An irregular valid region (~40% of the pixels) in blobs about the size of the test shapes."""
    return ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.5) > 0.5


def test_fallback_is_exact_for_irregular_shapes_and_regions():
    valid = _blobby_valid()
    plus = np.zeros((9, 9), bool)
    plus[3:6] = plus[:, 3:6] = True  # the same under every flip and rotation, not a box
    allowed = _allowed_origins(plus, valid, 2)
    assert 20 <= len(allowed) and len(_allowed_origins(np.ones((9, 9), bool), valid, 2)) < len(allowed)
    seen = set()
    for seed in range(600):
        p = place_on_fabric([plus], *valid.shape, np.random.default_rng(seed), valid=valid, scale_range=(1, 1),
                            border=2, max_tries=0)
        assert p.rejected_positions == 0
        seen.add(p.origin)
    assert seen == allowed  # every allowed position, and nothing else

    ref = _l_shape()[::3, ::3]  # an asymmetric L in a 10x10 box
    for seed in range(60):
        p = place_on_fabric([ref], *valid.shape, np.random.default_rng(seed), valid=valid, scale_range=(1, 1),
                            border=2, max_tries=0)
        assert p.origin in _allowed_origins(_placed_crop(p), valid, 2)


def test_no_fabric_placement_raises_with_sizes():
    refs = [_disk(20)]
    with pytest.raises(NoFabricPlacement, match=r"41x41 px.*0\.0% of the 256x1024 image"):
        place_on_fabric(refs, 256, 1024, np.random.default_rng(0), valid=np.zeros((256, 1024), bool),
                        scale_range=(1, 1))
    small = np.zeros((256, 1024), bool)
    small[100:130, 500:530] = True  # 30x30 fabric for a 41x41 disk
    with pytest.raises(NoFabricPlacement, match="no room"):
        place_reference_mask(refs, 256, 1024, np.random.default_rng(0), scale_range=(1, 1), valid=small)
    assert issubclass(NoFabricPlacement, ValueError)
    with pytest.raises(ValueError, match="valid has shape"):
        place_on_fabric(refs, 256, 1024, np.random.default_rng(0), valid=small[:, :10])
    with pytest.raises(ValueError, match="max_tries"):
        place_on_fabric(refs, 256, 1024, np.random.default_rng(0), max_tries=-1)


def test_fast_on_aitex_size_with_a_narrow_fabric_strip():
    import time

    valid = np.zeros((256, 4096), bool)
    valid[:, 3000:3300] = True
    refs = [_disk(20), _l_shape(), _streak()[:, :200]]
    start = time.perf_counter()
    for seed in range(10):  # max_tries=0: straight to the exact search over all positions
        p = place_on_fabric(refs, 256, 4096, np.random.default_rng(seed), valid=valid, max_tries=0)
        assert not (p.mask & ~valid).any() and p.rejected_positions == 0
    assert time.perf_counter() - start < 5  # ~0.04 s per placement measured


# ------------------------------------------------------------------ Placement.transform


def _placed_crop(p):
    (y0, x0), (th, tw) = p.origin, p.size
    return p.mask[y0 : y0 + th, x0 : x0 + tw]


def test_transform_reproduces_the_placed_mask_at_scale_one():
    ref = _l_shape()
    crop = crop_to_bbox(ref)
    rows, cols = np.mgrid[: crop.shape[0], : crop.shape[1]].astype(np.float32)
    coords = np.dstack([rows, cols, crop.astype(np.float32)])  # where each pixel came from
    seen = set()
    for seed in range(80):
        p = place_on_fabric([ref], 128, 128, np.random.default_rng(seed), scale_range=(1, 1))
        placed = _placed_crop(p)
        assert np.array_equal(p.transform(crop.astype(np.float32)) >= 0.5, placed)
        assert np.array_equal(p.transform(crop, cv2.INTER_NEAREST), placed)
        moved = p.transform(coords)
        assert moved.shape == (*p.size, 3)
        src_r, src_c = moved[..., 0].astype(int), moved[..., 1].astype(int)
        assert np.array_equal(crop[src_r, src_c], placed)
        seen.add((p.flip_h, p.flip_v, p.k))
    assert len(seen) == 16  # flips x 4 rotations, all exercised


def test_transform_matches_resized_placements_up_to_resampling():
    refs = [_disk(20), _l_shape()]
    for seed in range(40):
        p = place_on_fabric(refs, 256, 256, np.random.default_rng(seed), scale_range=(0.6, 1.6))
        crop = crop_to_bbox(refs[p.index])
        placed = _placed_crop(p)
        moved = p.transform(crop.astype(np.float32)[:, :, None])
        assert moved.shape == (*p.size, 1)
        warped = moved[..., 0] >= 0.5
        if crop.shape in (p.size, p.size[::-1]):
            assert np.array_equal(warped, placed)
        else:  # differences only along the resampled edges
            assert np.sum(warped != placed) <= 0.1 * placed.sum()
            edge = placed ^ ndimage.binary_erosion(placed, EIGHT)
            edge |= ndimage.binary_dilation(placed, EIGHT) & ~placed
            assert not ((warped != placed) & ~edge).any()
    with pytest.raises(ValueError, match="reference crop"):
        p.transform(np.zeros((3, 3), np.float32))
