"""Downstream segmenter: hand-computed metrics, tiling, sampling, learning, determinism, persistence."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from defectfill.downstream import (
    EvalTiles,
    SegmenterConfig,
    SourceImage,
    TileSet,
    UNet,
    ap_by_group,
    auroc,
    average_precision,
    best_f1,
    build_model,
    eval_tiles_for,
    evaluate_segmenter,
    f1_at,
    images_from_synthetic,
    load_segmenter,
    predict_probabilities,
    save_segmenter,
    split_by_source,
    tile_positions,
    train_segmenter,
)
from defectfill.downstream.tiles import fabric_regions
from defectfill.errors import ConfigError, DataError

T = torch.tensor

# ----------------------------------------------------------------------------- metrics, by hand


def test_average_precision_six_pixels_by_hand():
    # ranked: P N P N N P -> precision at each positive 1, 2/3, 3/6; AP = (1 + 2/3 + 1/2) / 3 = 13/18
    assert average_precision([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [1, 0, 1, 0, 0, 1]) == pytest.approx(13 / 18)
    # ties are one threshold: {0.9: P N} -> P=1/2 at R=1/3; {0.5: P P} -> P=3/4 at R=1; AP = 1/6 + 1/2
    assert average_precision([0.9, 0.9, 0.5, 0.5, 0.1, 0.1], [1, 0, 1, 1, 0, 0]) == pytest.approx(2 / 3)
    assert average_precision([0.2, 0.1], [1, 0]) == pytest.approx(1.0)
    assert np.isnan(average_precision([0.2, 0.1], [0, 0]))


def test_f1_by_hand():
    pos, neg = T([0.9, 0.7, 0.4]), T([0.8, 0.6, 0.5])
    # >= 0.5: TP 2 (0.9, 0.7), FP 3, FN 1 -> F1 = 4 / (4 + 3 + 1)
    assert f1_at(pos, neg, 0.5) == pytest.approx({"precision": 0.4, "recall": 2 / 3, "f1": 0.5})
    # thresholds 0.9: 2/4; 0.7: 4/6; 0.4: 6/9 -> best 2/3, the highest threshold wins the tie
    best = best_f1(pos, neg)
    assert best["f1"] == pytest.approx(2 / 3) and best["threshold"] == pytest.approx(0.7)
    assert best["precision"] == pytest.approx(2 / 3) and best["recall"] == pytest.approx(2 / 3)


def test_auroc_known_rankings():
    # pairs (pos, neg): (.9,.8) (.9,.2) (.3,.2) won, (.3,.8) lost -> 3/4
    assert auroc([0.9, 0.8, 0.3, 0.2], [1, 0, 1, 0]) == pytest.approx(0.75)
    assert auroc([0.1, 0.2, 0.3], [0, 1, 1]) == pytest.approx(1.0)
    assert auroc([0.1, 0.2, 0.3], [1, 0, 0]) == pytest.approx(0.0)
    # a tie between a positive and a negative counts 1/2: (.5,.5) tie, (.5,.1) won -> 1.5/2
    assert auroc([0.5, 0.5, 0.1], [1, 0, 0]) == pytest.approx(0.75)
    assert np.isnan(auroc([0.5, 0.4], [1, 1]))


def test_metrics_agree_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(5000, generator=g) * 40).round() / 40  # many ties
    y = torch.rand(5000, generator=g) < 0.1
    assert average_precision(s, y) == pytest.approx(float(tm.binary_average_precision(s, y.long())), abs=1e-6)
    assert auroc(s, y) == pytest.approx(float(tm.binary_auroc(s, y.long())), abs=1e-6)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("depth,size", [(4, 128), (4, 64), (4, 50), (2, 32), (3, 17)])
def test_unet_shapes(depth, size):
    model = UNet(in_channels=1, base_channels=4, depth=depth)
    assert model(torch.rand(2, 1, size, size + 24)).shape == (2, 1, size, size + 24)
    assert UNet(3, 4, depth)(torch.rand(1, 3, size, size)).shape == (1, 1, size, size)


# ----------------------------------------------------------------------------- tiling


def test_eval_tiles_cover_every_pixel_once():
    assert len(tile_positions(4096, 256)) == 16
    assert tile_positions(3796, 256)[-2:] == [(3328, 3328, 3584), (3540, 3584, 3796)]  # 14 full + 1 at the edge
    assert tile_positions(50, 64) == [(0, 0, 50)]
    zeros = np.zeros
    images = [SourceImage("a", zeros((256, 4096), np.uint8), zeros((256, 4096), bool), "a"),
              SourceImage("b", zeros((256, 3796), np.uint8), zeros((256, 3796), bool), "b"),
              SourceImage("c", zeros((50, 100), np.uint8), zeros((50, 100), bool), "c")]
    assert len(EvalTiles(images[:1], 256)) == 16 and len(EvalTiles(images[:1], 128)) == 64
    tiles = EvalTiles(images, 64)
    assert len(tiles) == 4 * 64 + 4 * 60 + 2  # 3796 = 59 * 64 + 20 -> 60 columns; 100 -> 2 columns
    counts = [zeros(im.mask.shape, int) for im in images]
    for t in tiles.tiles:
        yf, yt, xf, xt = t.own
        counts[t.image_index][yf:yt, xf:xt] += 1
        assert tiles.own_mask(t).sum() == (yt - yf) * (xt - xf)
    assert all((c == 1).all() for c in counts)


class ValueModel(torch.nn.Module):
    """Probability = the (grey) pixel value, so evaluation metrics can be computed by hand."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.logit(x[:, :1].clamp(1e-4, 1 - 1e-4))


def test_evaluate_by_hand_on_two_tiny_images():
    p = lambda v: np.round(np.array(v) * 255).astype(np.uint8)  # noqa: E731
    a = p([[0.9, 0.8, 0.7, 0.6, 0.5], [0.4, 0.3, 0.2, 0.1, 0.0]])
    mask_a = np.zeros((2, 5), bool)
    mask_a[0, 0] = mask_a[0, 2] = mask_a[1, 0] = True  # positives 0.9, 0.7, 0.4
    b = p(np.full((2, 5), 0.05))
    b[1, 4] = p(0.75)
    images = [SourceImage("a", a, mask_a, "a"), SourceImage("b", b, np.zeros((2, 5), bool), "b", "good")]
    tiles = EvalTiles(images, tile=2)  # columns [0,1], [2,3], [3,4] (the last owns column 4 only)
    out = evaluate_segmenter(ValueModel(), tiles, threshold=0.69)  # 0.7 is stored as 178/255
    # pixels ranked: .9P .8N .75N .7P .6N .5N .4P (rest N): AP = (1 + 2/4 + 3/7) / 3 = 9/14
    assert out["pixel_ap"] == pytest.approx(9 / 14, abs=1e-6)
    assert out["pixel_f1@0.5"] == pytest.approx(4 / 9)  # TP 2, FP 4 (.8 .75 .6 .5), FN 1
    assert out["pixel_f1@threshold"] == pytest.approx(4 / 7)  # >= .69: TP 2, FP 2, FN 1
    assert out["pixel_f1_best"] == pytest.approx(0.6) and out["pixel_f1_best_optimistic"]  # at .4: 6/10
    assert out["pixel_f1_best_threshold"] == pytest.approx(0.4, abs=0.01)
    # tiles: a -> (.9, P) (.7, P) (.6, N); b -> (.05, N) (.05, N) (.75, N): pairs won 4 + 3 of 8
    assert out["tile_auroc"] == pytest.approx(7 / 8)
    assert (out["tiles"], out["positive_tiles"], out["pixels"], out["positive_pixels"]) == (6, 2, 20, 3)
    assert out["pixel_positive_rate"] == pytest.approx(0.15)


def _hand_images():
    p = lambda v: np.round(np.array(v) * 255).astype(np.uint8)  # noqa: E731
    a = p([[0.9, 0.8, 0.7, 0.6, 0.5], [0.4, 0.3, 0.2, 0.1, 0.0]])
    mask_a = np.zeros((2, 5), bool)
    mask_a[0, 0] = mask_a[0, 2] = mask_a[1, 0] = True
    b = p(np.full((2, 5), 0.05))
    b[1, 4] = p(0.75)
    return [SourceImage("a", a, mask_a, "a"), SourceImage("b", b, np.zeros((2, 5), bool), "b", "good")]


def test_evaluation_region_drops_off_region_negatives_and_keeps_all_pixel_figures():
    images = _hand_images()
    region_a = np.ones((2, 5), bool)
    region_a[0, 1] = False  # the .8 negative is off fabric
    region_b = np.ones((2, 5), bool)
    region_b[1, 4] = False  # so is the .75 negative
    out = evaluate_segmenter(ValueModel(), EvalTiles(images, tile=2, regions=[region_a, region_b]))
    # counted: .9P .7P .6N .5N .4P ...: AP = (1 + 1 + 3/5) / 3
    assert out["pixel_region"] == "fabric" and out["pixel_ap"] == pytest.approx(2.6 / 3, abs=1e-6)
    assert out["pixels"] == 18 and out["all_pixels"]["pixels"] == 20
    assert out["all_pixels"]["pixel_ap"] == pytest.approx(9 / 14, abs=1e-6)
    # tiles score their counted pixels only: b's last tile scores .05 instead of .75 (7/8 over all pixels)
    assert out["tiles"] == 6 and out["tile_auroc"] == pytest.approx(1.0)


def test_all_pixel_figures_equal_an_evaluation_without_regions():
    from defectfill.downstream.segmenter import NegativeCounts, average_precision_split

    images = toy_images(4, 3)
    plain = evaluate_segmenter(SmoothModel(), EvalTiles(images, tile=32), threshold=0.3)
    keys = ("pixel_ap", "pixel_f1@0.5", "pixel_f1_best", "pixel_f1@threshold", "pixels", "positive_pixels")
    for drop_defect in (False, True):  # regions holding every defect pixel, and regions that drop one
        regions = fabric_regions(images)
        regions[0][:, :40] = False
        if drop_defect:
            y, x = np.argwhere(images[1].mask)[0]
            regions[1][y, x] = False
        out = evaluate_segmenter(SmoothModel(), EvalTiles(images, tile=32, regions=regions), threshold=0.3)
        assert out["pixels"] < plain["pixels"]
        assert {k: out["all_pixels"][k] for k in keys} == pytest.approx({k: plain[k] for k in keys}, abs=1e-12)
    # counting float32 scores against float32 thresholds is exact: the same counts as in float64
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.rand(300, generator=g), torch.rand(20000, generator=g) ** 3
    c32, c64 = NegativeCounts(pos, neg, chunk=4096), NegativeCounts(pos, neg.double())
    assert torch.equal(c32.fp_asc, c64.fp_asc)
    both = NegativeCounts(pos, neg[:5000]).extended(neg[5000:])
    assert torch.equal(both.fp_asc, c64.fp_asc) and both.numel() == 20000
    assert average_precision_split(pos[:100], both) == pytest.approx(average_precision(
        torch.cat([pos[:100], neg]), torch.cat([torch.ones(100), torch.zeros(20000)])), abs=1e-12)


def test_per_type_ap_by_hand():
    per = ap_by_group({"x": torch.tensor([0.9, 0.4]), "y": torch.tensor([0.7]), "z": torch.tensor([])},
                      torch.tensor([0.8, 0.5, 0.1]))
    # x: .9P .8N .5N .4P -> (1 + 2/4) / 2; y: .8N .7P -> 1/2; z has no pixels and is left out
    assert per["by_group"]["x"]["ap"] == pytest.approx(0.75) and per["by_group"]["y"]["ap"] == pytest.approx(0.5)
    assert set(per["by_group"]) == {"x", "y"} and per["macro"] == pytest.approx(0.625)
    out = evaluate_segmenter(ValueModel(), EvalTiles(_hand_images(), tile=2), groups=["x", "good"])
    assert out["pixel_ap_by_type"]["x"]["ap"] == pytest.approx(9 / 14, abs=1e-6) == out["pixel_ap_macro"]


def _component_images():
    """Two 6x10 images with distinct grey values: ``a`` has three defect components (one only
    8-connected, one off the counted region), ``b`` is good; regions drop a few pixels of each."""
    rng = np.random.default_rng(5)
    values = rng.permutation(np.arange(20, 240, 1))[:120].astype(np.uint8)
    a, b = values[:60].reshape(6, 10).copy(), values[60:].reshape(6, 10).copy()
    mask = np.zeros((6, 10), bool)
    comp1, comp2, comp3 = [(1, 1), (1, 2), (2, 1)], [(4, 5), (3, 6)], [(0, 9)]  # comp2 touches diagonally only
    for y, x in comp1 + comp2 + comp3:
        mask[y, x] = True
    a[1, 2], a[2, 1] = 250, 245  # comp1's maximum (off the region) and its counted maximum
    region_a = np.ones((6, 10), bool)
    region_a[1, 2] = region_a[0, 9] = False  # comp1 loses its max, comp3 all of its pixels
    region_a[5, 0] = False
    b[2, 2] = 252  # b's brightest pixel is off the region
    region_b = np.ones((6, 10), bool)
    region_b[2, 2] = False
    images = [SourceImage("a_img", a, mask, "a_src"), SourceImage("b", b, np.zeros((6, 10), bool), "b", "good")]
    return images, [region_a, region_b], (comp1, comp2, comp3)


def test_per_source_records_by_hand():
    images, regions, (comp1, comp2, _) = _component_images()
    tiles = EvalTiles(images, tile=4, regions=regions)  # rows 0, 2 (owns 4-5); columns 0, 4, 6 (owns 8-9)
    plain = evaluate_segmenter(ValueModel(), tiles)
    out = evaluate_segmenter(ValueModel(), tiles, per_source=True, bins=16)
    assert "per_source" not in plain and set(out) - set(plain) == {"per_source"}
    assert all(out[k] == plain[k] for k in plain if k != "seconds")
    ra, rb = out["per_source"]
    a, b = images[0].image / 255, images[1].image / 255
    assert (ra["id"], ra["type"], rb["id"], rb["type"]) == ("a_src", "defect", "b", "good")
    # comp1 scores its counted max (245, not the off-region 250), comp2 is ONE component, comp3 is skipped
    expected = [max(a[y, x] for y, x in comp1 if (y, x) != (1, 2)), max(a[y, x] for y, x in comp2)]
    assert ra["region_scores"] == pytest.approx(expected, abs=1e-5)
    assert expected[0] == pytest.approx(245 / 255)
    assert ra["image_score"] == pytest.approx(max(a[regions[0]]), abs=1e-5) == pytest.approx(245 / 255, abs=1e-5)
    assert rb["region_scores"] == [] and rb["image_score"] == pytest.approx(max(b[regions[1]]), abs=1e-5)
    assert rb["image_score"] < 252 / 255
    counted_pos = a[regions[0] & images[0].mask]
    counted_neg = [a[regions[0] & ~images[0].mask], b[regions[1]]]
    assert ra["pos_hist"] == np.bincount((counted_pos * 16).astype(int), minlength=16).tolist()
    assert ra["neg_hist"] == np.bincount((counted_neg[0] * 16).astype(int), minlength=16).tolist()
    assert rb["neg_hist"] == np.bincount((counted_neg[1] * 16).astype(int), minlength=16).tolist()
    assert sum(rb["pos_hist"]) == 0 and len(ra["pos_hist"]) == 16
    assert sum(ra["pos_hist"]) + sum(rb["pos_hist"]) == out["positive_pixels"] == 4
    assert sum(sum(r["pos_hist"]) + sum(r["neg_hist"]) for r in out["per_source"]) == out["pixels"] == 120 - 4
    grouped = evaluate_segmenter(ValueModel(), tiles, per_source=True, groups=["nep", "good"])["per_source"]
    assert [r["type"] for r in grouped] == ["nep", "good"] and len(grouped[0]["pos_hist"]) == 1024


class SmoothModel(torch.nn.Module):
    """Continuous, partly informative scores: dark 3x3 means score high, plus a pseudo-random term."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        m = torch.nn.functional.avg_pool2d(x[:, :1], 3, stride=1, padding=1, count_include_pad=False)
        return 6 * (0.45 - m) + 2.5 * torch.sin(5000 * m)


def test_per_source_histograms_pool_to_the_exact_pixel_ap():
    from defectfill.downstream.segmenter import histogram_average_precision

    images = toy_images(6, 1)
    tiles = eval_tiles_for(SegmenterConfig(crop=32, size=32), images)  # fabric regions, 32 px tiles
    out = evaluate_segmenter(SmoothModel(), tiles, per_source=True, groups=[f"g{i}" for i in range(6)])
    records = out["per_source"]
    assert [r["id"] for r in records] == [im.source_id for im in images]
    pos = np.sum([r["pos_hist"] for r in records], axis=0)
    neg = np.sum([r["neg_hist"] for r in records], axis=0)
    assert pos.sum() == out["positive_pixels"] and pos.sum() + neg.sum() == out["pixels"]
    assert 0.2 < out["pixel_ap"] < 0.6 and out["pixel_positive_rate"] < 0.02  # neither trivial nor chance
    assert histogram_average_precision(pos, neg) == pytest.approx(out["pixel_ap"], abs=0.002)
    coarse = evaluate_segmenter(SmoothModel(), tiles, per_source=True, bins=16)["per_source"]
    pos16, neg16 = (np.sum([r[k] for r in coarse], axis=0) for k in ("pos_hist", "neg_hist"))
    assert abs(histogram_average_precision(pos16, neg16) - out["pixel_ap"]) > 0.01  # the test can tell bins apart
    # a subset of images pools the same way as evaluating that subset alone
    sub = evaluate_segmenter(SmoothModel(), eval_tiles_for(SegmenterConfig(crop=32, size=32), images[:3]))
    pos3, neg3 = (np.sum([r[k] for r in records[:3]], axis=0) for k in ("pos_hist", "neg_hist"))
    assert histogram_average_precision(pos3, neg3) == pytest.approx(sub["pixel_ap"], abs=0.002)
    assert all(r["region_scores"] == [] for r, im in zip(records, images) if not im.has_defect)
    assert all(len(r["region_scores"]) >= 1 for r, im in zip(records, images) if im.has_defect)
    # hand values of the histogram AP: .9P .8N (one bin each) -> AP 1; one shared bin -> P = 1/2
    assert histogram_average_precision([0, 1], [1, 0]) == pytest.approx(1.0)
    assert histogram_average_precision([0, 2], [0, 2]) == pytest.approx(0.5)
    assert np.isnan(histogram_average_precision([0, 0], [3, 1]))


def test_fabric_regions_leave_out_white_border_but_keep_defects():
    rng = np.random.default_rng(0)
    img = rng.integers(60, 140, size=(64, 96)).astype(np.uint8)
    img[:, 70:] = 255  # off-fabric white border
    mask = np.zeros((64, 96), bool)
    mask[30:34, 75:80] = True  # an annotated defect reaching into the border
    region = fabric_regions([SourceImage("w", img, mask, "w")])[0]
    assert region[:, :70].all() and region[mask].all()
    assert not region[:, 70:][~mask[:, 70:]].any()


# ----------------------------------------------------------------------------- training tiles


def toy_images(n, seed, h=64, w=128, good_every=4):
    """Flat noisy texture with dark disc defects (every ``good_every``-th image defect-free)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = []
    for i in range(n):
        img = 0.6 + 0.06 * rng.standard_normal((h, w))
        mask = np.zeros((h, w), bool)
        if i % good_every:
            for _ in range(rng.integers(1, 4)):
                cy, cx, r = rng.integers(6, h - 6), rng.integers(6, w - 6), rng.uniform(2.5, 5)
                mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[mask] -= 0.3
        name = f"s{seed}_{i}"
        out.append(SourceImage(name, np.clip(img * 255, 0, 255).astype(np.uint8), mask, name,
                               "real" if mask.any() else "good"))
    return out


def test_tileset_balanced_deterministic_and_labelled():
    tiles = TileSet(toy_images(8, 0), crop=32, size=16, seed=3, positive_fraction=0.5)
    b = tiles.batch(5, 8)
    assert b["images"].shape == (8, 1, 16, 16) and b["masks"].shape == (8, 1, 16, 16)
    assert 0 <= b["images"].min() and b["images"].max() <= 1
    assert b["positive"] == [True] * 4 + [False] * 4
    assert all(b["masks"][:4].flatten(1).amax(1) == 1)  # defect-centred crops hold defect pixels
    assert all(b["masks"][4:].flatten(1).amax(1) == 0)  # random crops away from the defects
    again = tiles.batch(5, 8)
    assert torch.equal(b["images"], again["images"]) and b["ids"] == again["ids"]
    assert not torch.equal(b["images"], tiles.batch(6, 8)["images"])
    frac = np.mean([p for s in range(50) for p in tiles.batch(s, 3)["positive"]])
    assert frac == pytest.approx(0.5, abs=0.1)  # 1.5 per batch of 3: floor + Bernoulli(remainder)


def mix_images(n_real=3, n_syn=12, real_weights=(3.0, 1.0, 1.0), syn_weight=0.5):
    """Small 24x24 images, one 4x4 defect each: ``n_real`` real, ``n_syn`` synthetic, one good."""
    out = []
    for i in range(n_real + n_syn + 1):
        mask = np.zeros((24, 24), bool)
        if i < n_real + n_syn:
            mask[10:14, 10:14] = True
        origin, weight = (("real", real_weights[i]) if i < n_real else ("synthetic", syn_weight)
                          if i < n_real + n_syn else ("good", 1.0))
        img = np.full((24, 24), 150, np.uint8)
        out.append(SourceImage(f"{origin}{i}", img, mask, f"src{i}", origin, weight))
    return out


def positive_origins(tiles, crops=2000, batch=50):
    """Ids of ``crops`` positive crops (positive_fraction=1), and their ``synthetic`` flags."""
    ids, syn = [], []
    for step in range(crops // batch):
        b = tiles.batch(step, batch)
        assert all(b["positive"])
        ids += b["ids"]
        syn += b["synthetic"]
    assert syn == [i.startswith("synthetic") for i in ids]
    return ids, np.array(syn)


@pytest.mark.parametrize("fraction", [0.3, 0.0, 1.0])
def test_synthetic_fraction_sets_the_share_of_synthetic_positives(fraction):
    tiles = TileSet(mix_images(), crop=8, size=8, positive_fraction=1.0, synthetic_fraction=fraction)
    ids, syn = positive_origins(tiles)
    sigma = np.sqrt(fraction * (1 - fraction) / len(syn))
    assert abs(syn.mean() - fraction) <= 4 * sigma  # exact 0 / 1 at the ends
    real = [i for i in ids if i.startswith("real")]
    if fraction < 1:  # within the real group by weight: real0 has 3 of the weight 5
        assert abs(real.count("real0") / len(real) - 0.6) <= 4 * np.sqrt(0.24 / len(real))


def test_synthetic_fraction_none_follows_weights_and_real_only_is_unchanged():
    tiles = TileSet(mix_images(), crop=8, size=8, positive_fraction=1.0)
    _, syn = positive_origins(tiles)
    expected = 12 * 0.5 / (12 * 0.5 + 3 + 1 + 1)  # synthetic weight / all defect-image weight = 6/11
    assert abs(syn.mean() - expected) <= 4 * np.sqrt(expected * (1 - expected) / len(syn))
    real_only = [im for im in mix_images() if im.origin != "synthetic"]
    a = TileSet(real_only, crop=8, size=8, seed=4)
    b = TileSet(real_only, crop=8, size=8, seed=4, synthetic_fraction=0.3)
    for step in range(5):  # no synthetic group: every positive real, the very same random stream
        ba, bb = a.batch(step, 6), b.batch(step, 6)
        assert ba["ids"] == bb["ids"] and torch.equal(ba["images"], bb["images"]) and not any(bb["synthetic"])
    with pytest.raises(DataError, match="no real image"):
        TileSet([im for im in mix_images() if im.origin != "real"], synthetic_fraction=0.0)
    with pytest.raises(ValueError, match="synthetic_fraction"):
        TileSet(mix_images(), synthetic_fraction=1.5)


def test_split_by_source_has_no_overlap():
    images = toy_images(20, 0)
    derived = SourceImage("syn0", images[1].image, images[1].mask, images[1].source_id, "synthetic")
    train, val = split_by_source(images + [derived], 0.25, seed=0)
    train_ids, val_ids = {im.source_id for im in train}, {im.source_id for im in val}
    assert not train_ids & val_ids and len(train) + len(val) == 21
    assert any(im.has_defect for im in val) and any(not im.has_defect for im in val)
    assert sum(im.id in ("syn0", images[1].id) for im in val) in (0, 2)  # derivatives stay with their source
    assert split_by_source(images, 0.25, seed=0)[1] == split_by_source(images, 0.25, seed=0)[1]


def test_images_from_synthetic_reads_accepted_samples(tmp_path):
    from defectfill.generation.samples import Sample, SampleWriter

    writer = SampleWriter(tmp_path / "syn", ["blob"])
    img = toy_images(2, 0)[1]
    writer.write(Sample("000000", img.image, img.mask, "blob", {"source_image": "/x/good/0007_000_02.png"}))
    writer.write_rejected(Sample("000001", img.image, img.mask, "blob"), "too faint")
    [loaded] = images_from_synthetic(tmp_path / "syn")
    assert (loaded.id, loaded.source_id, loaded.origin) == ("000000", "0007_000_02", "synthetic")
    assert np.array_equal(loaded.image, img.image) and np.array_equal(loaded.mask, img.mask)


# ----------------------------------------------------------------------------- training


TINY = dict(arch="unet", base_channels=4, depth=2, crop=32, size=32, batch_size=4, steps=6, log_every=3)


def test_segmenter_learns_a_toy_problem():
    cfg = SegmenterConfig(arch="unet", base_channels=8, depth=2, crop=32, size=32, steps=150, lr=3e-3, log_every=50)
    test_tiles = eval_tiles_for(cfg, toy_images(6, 1))
    model, log = train_segmenter(cfg, toy_images(12, 0), val_tiles=toy_images(4, 2))
    out = evaluate_segmenter(model, test_tiles)
    chance = out["pixel_positive_rate"]
    assert 0.002 < chance < 0.02 and out["positive_tiles"] >= 3
    assert out["pixel_ap"] > 0.5 > 20 * chance, out
    assert out["tile_auroc"] > 0.9, out
    assert log["steps"] == 150 and log["history"][-1]["loss"] < log["history"][0]["loss"]
    assert 0 < log["val_threshold"] < 1 and "pixel_f1@threshold" in evaluate_segmenter(model, test_tiles,
                                                                                      log["val_threshold"])
    untrained, _ = train_segmenter(SegmenterConfig(**{**json.loads(json.dumps(log["config"])), "steps": 0}),
                                   toy_images(12, 0))
    assert evaluate_segmenter(untrained, test_tiles)["pixel_ap"] < 0.2  # the images alone give no AP


def test_same_seed_same_weights_and_save_load_round_trip(tmp_path):
    images = toy_images(6, 0)
    cfg = SegmenterConfig(**TINY, seed=1)
    m1, log = train_segmenter(cfg, images)
    m2, _ = train_segmenter(cfg, images)
    assert (log["positive_crops"], log["synthetic_positive_crops"]) == (6 * 2, 0)  # 6 steps x half of 4, real only
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    m3, _ = train_segmenter(SegmenterConfig(**TINY, seed=2), images)
    assert not torch.equal(s1["head.weight"], m3.state_dict()["head.weight"])

    folder = save_segmenter(m1, cfg, tmp_path / "seg")
    assert (folder / "model.safetensors").is_file()
    loaded, cfg2 = load_segmenter(folder)
    assert cfg2 == cfg and not loaded.training
    x = torch.rand(3, 1, 32, 48)
    assert torch.equal(predict_probabilities(m1.eval(), x), predict_probabilities(loaded, x))


def test_pretrained_segmenter_keeps_frozen_imagenet_encoder_and_round_trips(tmp_path):
    from defectfill.backbones import efficientnet_lite0

    images = toy_images(6, 0)
    cfg = SegmenterConfig(crop=32, size=32, batch_size=2, steps=3, log_every=3, seed=0)
    assert cfg.arch == "unet_lite0" and cfg.encoder_weights == "imagenet" and cfg.trainable_stages == 0
    model, _ = train_segmenter(cfg, images)
    imagenet = efficientnet_lite0().state_dict()
    encoder = model.net.encoder.model.state_dict()
    assert all(torch.equal(v, imagenet[k]) for k, v in encoder.items())  # weights and BN statistics
    untrained = build_model(cfg)
    assert not torch.equal(untrained.net.segmentation_head[0].weight, model.net.segmentation_head[0].weight)
    folder = save_segmenter(model, cfg, tmp_path / "seg")
    loaded, _ = load_segmenter(folder)
    x = torch.rand(2, 1, 32, 40)
    assert torch.equal(predict_probabilities(model, x), predict_probabilities(loaded, x))

    partly, _ = train_segmenter(SegmenterConfig(**{**asdict(cfg), "trainable_stages": 1}), images)
    blocks = partly.net.encoder.model.blocks
    assert torch.equal(blocks[5][0].conv_pw.weight, imagenet["blocks.5.0.conv_pw.weight"])
    assert not torch.equal(blocks[6][0].conv_pw.weight, imagenet["blocks.6.0.conv_pw.weight"])


def test_config_checks():
    with pytest.raises(ConfigError, match="schedule"):
        SegmenterConfig(schedule="step").validate()
    with pytest.raises(ConfigError, match="unknown"):
        SegmenterConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="synthetic_fraction"):
        SegmenterConfig(synthetic_fraction=1.5).validate()
    SegmenterConfig(synthetic_fraction=None).validate()
    tiles = TileSet(toy_images(4, 0), crop=32, size=16)
    with pytest.raises(ConfigError, match="size"):
        train_segmenter(SegmenterConfig(**TINY), tiles)  # tiles built for another size


def test_rgb_images_are_reduced_to_grey_exactly(tmp_path):
    img = toy_images(2, 0)[1]
    path = tmp_path / "x.png"
    Image.fromarray(np.repeat(img.image[..., None], 3, axis=2)).save(path)
    from defectfill.downstream.tiles import _read_image

    assert np.array_equal(_read_image(path, 1), img.image)


def test_tile_recall_by_group_by_hand():
    from defectfill.downstream.segmenter import tile_recall_by_group

    scores = [0.9, 0.2, 0.7, 0.1, 0.95]
    labels = [True, True, True, False, False]
    groups = ["nep", "nep", "hole", "nep", "hole"]
    assert tile_recall_by_group(scores, labels, groups, 0.5) == {
        "hole": {"recall": 1.0, "tiles": 1}, "nep": {"recall": 0.5, "tiles": 2}}


def test_synthetic_phase_pretrains_on_synthetic_then_fine_tunes_on_real():
    """steps 6, synthetic_phase 0.5: steps 0-2 draw every positive from synthetic images (fraction 1),
    steps 3-5 from real ones; phase 1 is today's mixing, weight for weight."""
    images = mix_images()
    cfg = SegmenterConfig(**{**TINY, "crop": 8, "size": 8, "positive_fraction": 1.0, "synthetic_fraction": 1.0,
                             "synthetic_phase": 0.5})
    _, log = train_segmenter(cfg, images)
    assert (log["positive_crops"], log["synthetic_positive_crops"]) == (6 * 4, 3 * 4)
    tiles = TileSet(images, crop=8, size=8, positive_fraction=1.0, synthetic_fraction=1.0)
    assert all(tiles.batch(0, 4)["synthetic"]) and not any(tiles.batch(0, 4, real_positives_only=True)["synthetic"])

    whole = SegmenterConfig(**{**TINY, "crop": 8, "size": 8, "positive_fraction": 1.0, "synthetic_fraction": 0.5})
    _, log = train_segmenter(whole, images)  # phase 1 (default): the mixed stream of every step
    mixed = TileSet(images, crop=8, size=8, positive_fraction=1.0, synthetic_fraction=0.5)
    assert log["synthetic_positive_crops"] == sum(sum(mixed.batch(step, 4)["synthetic"]) for step in range(6))

    synthetic_only = [im for im in images if im.origin != "real"]
    with pytest.raises(DataError, match="synthetic_phase=0.5 .* no real training image"):
        train_segmenter(cfg, synthetic_only)
    with pytest.raises(ConfigError, match="synthetic_phase"):
        SegmenterConfig(synthetic_phase=1.5).validate()
