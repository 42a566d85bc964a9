"""DGT's downstream modules as library code: the open-set machinery (Weibull tails, OpenMax, the
training-data threshold, metrics), the DFC classifier and its crops (defectfill.downstream.openset),
and the DIS U-Net, its loss and heat map, also as the segmenter family's "dis_unet"
(defectfill.downstream.dis)."""

import numpy as np
import pytest
import torch
from scipy.stats import weibull_min

from defectfill.downstream.dis import DISUNet, dis_loss, heat_map, soft_dice_loss
from defectfill.downstream.openset import (
    UNKNOWN,
    DFCConfig,
    DFCNet,
    OpenMaxModel,
    choose_threshold,
    class_means,
    defect_crops,
    fit_openmax,
    fit_weibull_tail,
    flag_unknown,
    open_set_auroc,
    open_set_report,
    openmax_scores,
    train_dfc,
    weibull_cdf,
)
from defectfill.downstream.segmenter import auroc

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- Weibull tails


def test_weibull_fit_recovers_shape_and_scale():
    x = weibull_min.rvs(2.0, scale=3.0, size=3000, random_state=0)
    shape, loc, scale = fit_weibull_tail(x, tail_size=len(x))  # the whole sample
    assert loc == 0.0
    assert shape == pytest.approx(2.0, rel=0.1) and scale == pytest.approx(3.0, rel=0.1)
    # the CDF is scipy's
    d = np.array([0.5, 3.0, 6.0])
    np.testing.assert_allclose(weibull_cdf(d, (shape, loc, scale)), weibull_min.cdf(d, shape, loc, scale))
    assert weibull_cdf(np.array([-1.0]), (shape, loc, scale))[0] == 0.0


def test_weibull_fit_uses_only_the_largest_distances():
    x = np.random.default_rng(0).uniform(0, 10, 500)
    got = fit_weibull_tail(x, tail_size=40)
    c, _, scale = weibull_min.fit(np.sort(x)[-40:], floc=0)
    assert got == pytest.approx((c, 0.0, scale))
    assert fit_weibull_tail(np.r_[x, -0.0 + np.zeros(100)], 40) == pytest.approx(got)  # small values do not matter
    assert fit_weibull_tail([2.0, 2.0, 2.0], 2) == (10.0, 0.0, 2.0)  # no spread: a steep step at the value
    with pytest.raises(ValueError, match="non-negative"):
        fit_weibull_tail([1.0, -1.0], 2)


# ----------------------------------------------------------------------------- OpenMax on synthetic features


D = 8
MEANS = 10 * np.eye(3, D)  # 3 known classes, well separated
W = MEANS.T / 10  # a linear classifier: logits = f @ W


def known(n, seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n)
    return MEANS[y] + rng.normal(0, 1, (3 * n, D)), y


def novel(n, seed):
    f = np.random.default_rng(seed).normal(0, 1, (n, D))
    f[:, 3] += 10  # a fourth class, far from the known ones
    return f


def test_class_means_use_correctly_classified_samples_only():
    f = np.array([[0.0], [2.0], [100.0], [10.0], [12.0]])
    labels = np.array([0, 0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 1, 1])  # the outlier 100 is misclassified
    np.testing.assert_allclose(class_means(f, labels, predicted), [[1.0], [11.0]])
    # a class without a correct sample falls back to all its samples
    np.testing.assert_allclose(class_means(f, labels, np.array([1, 1, 1, 1, 1])), [[34.0], [11.0]])


def test_openmax_probabilities_by_hand_and_sum_to_one():
    model = OpenMaxModel(means=np.array([[0.0, 0.0], [10.0, 0.0]]),
                         weibull=np.array([[2.0, 0.0, 1.0], [2.0, 0.0, 1.0]]), tail_size=2)
    f, z = np.array([[1.0, 0.0]]), np.array([[3.0, 1.0]])
    w0 = 1 - np.exp(-1.0)  # distance 1 to class 0's mean: W = 1 - exp(-1^2)
    w1 = 1 - np.exp(-81.0)  # distance 9 to class 1's mean
    # alpha 2: top class weight 2/2, second 1/2
    om0, om1 = 1 - w0, 1 - 0.5 * w1
    v = np.array([3 * om0, 1 * om1, 3 * (1 - om0) + 1 * (1 - om1)])
    expected = np.exp(v) / np.exp(v).sum()
    np.testing.assert_allclose(openmax_scores(model, f, z, alpha=2)[0], expected)
    # alpha 1: only the top class is revised
    v1 = np.array([3 * om0, 1.0, 3 * (1 - om0)])
    np.testing.assert_allclose(openmax_scores(model, f, z, alpha=1)[0], np.exp(v1) / np.exp(v1).sum())
    # any features / logits: a distribution over K + 1 classes
    rng = np.random.default_rng(0)
    p = openmax_scores(model, rng.normal(0, 5, (50, 2)), rng.normal(0, 5, (50, 2)), alpha=5)
    assert p.shape == (50, 3) and (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_openmax_flags_a_far_novel_class_with_a_training_threshold():
    f_train, y_train = known(300, 1)
    model = fit_openmax(f_train, y_train, f_train @ W, tail_size=20)
    np.testing.assert_allclose(model.means, MEANS, atol=0.2)
    train_unknown = openmax_scores(model, f_train, f_train @ W, alpha=2)[:, -1]
    threshold = choose_threshold(train_unknown, 0.95)  # chosen on training data only
    assert threshold == pytest.approx(np.quantile(train_unknown, 0.95))
    assert flag_unknown(train_unknown, threshold).mean() == pytest.approx(0.05, abs=0.005)

    f_test, y_test = known(1000, 2)  # fresh known samples
    f_novel = novel(500, 3)
    p_test, p_novel = openmax_scores(model, f_test, f_test @ W, 2), openmax_scores(model, f_novel, f_novel @ W, 2)
    np.testing.assert_allclose(p_test.sum(1), 1.0)
    np.testing.assert_allclose(p_novel.sum(1), 1.0)
    report = open_set_report(p_test[:, -1], p_novel[:, -1], threshold, p_test[:, :-1].argmax(1), y_test)
    assert report["novel_flagged_fraction"] >= 0.9, report
    assert report["known_false_unknown_rate"] == pytest.approx(0.05, abs=0.03), report
    assert report["auroc"] > 0.95 and report["known_accuracy"] > 0.99, report
    assert report["known_accuracy_open"] <= report["known_accuracy"]


def test_choose_threshold_and_auroc():
    train = np.arange(101) / 100  # 0.00 .. 1.00
    assert choose_threshold(train, 0.95) == pytest.approx(0.95)
    assert flag_unknown(train, 0.95).sum() == 5  # strictly above
    with pytest.raises(ValueError):
        choose_threshold([], 0.95)
    rng = np.random.default_rng(0)
    k, n = rng.normal(0, 1, 200), rng.normal(1, 1, 100)
    ref = auroc(np.r_[k, n], np.r_[np.zeros(200), np.ones(100)])
    assert open_set_auroc(k, n) == pytest.approx(ref, abs=1e-6)
    assert open_set_auroc([0.1, 0.2], [0.3]) == 1.0 and np.isnan(open_set_auroc([], [0.3]))


# ----------------------------------------------------------------------------- crops and DFC


def stripes(n, kind, seed, size=32):
    """Noisy sinusoidal stripes; the class is the orientation."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    coord = {"h": yy, "v": xx, "d": (xx + yy) / np.sqrt(2), "a": (xx - yy) / np.sqrt(2)}[kind]
    out = [128 + 60 * np.sin(2 * np.pi * coord / rng.uniform(5, 8) + rng.uniform(0, 2 * np.pi))
           + rng.normal(0, 10, (size, size)) for _ in range(n)]
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def stripe_set(n, seed, kinds="hvd"):
    x = np.concatenate([stripes(n, k, seed + i) for i, k in enumerate(kinds)])
    return x, [k for k in kinds for _ in range(n)]


def test_defect_crops_centre_on_the_mask_and_resize():
    img = np.zeros((100, 200), np.uint8)
    img[40:60, 90:110] = 255
    mask = img > 0
    [crop] = defect_crops([img], [mask], crop=40, size=20)
    assert crop.shape == (20, 20)
    assert crop[5:15, 5:15].min() == 255 and crop[:4].max() == 0  # the 20-px square in the middle half
    corner = np.zeros((100, 200), bool)
    corner[0:4, 196:200] = True  # at the border: the window shifts inside the image
    rgb = np.stack([img * 0 + 30] * 3, -1)
    rgb[0:4, 196:200] = 200
    [c] = defect_crops([rgb], [corner], crop=32, size=32)
    assert c.dtype == np.uint8 and c[0:4, 28:32].min() == 200 and c[10:, :20].max() == 30
    small = defect_crops([np.full((10, 12), 7, np.uint8)], [np.ones((10, 12), bool)], crop=16, size=16)
    assert small.shape == (1, 16, 16) and (small == 7).all()  # edge-replicated
    with pytest.raises(ValueError, match="empty"):
        defect_crops([img], [np.zeros_like(mask)], 32, 32)


@pytest.mark.parametrize("pretrained", [False, True])
def test_train_dfc_learns_orientation_and_predicts(pretrained):
    x, labels = stripe_set(30, 0)
    cfg = DFCConfig(crop=32, size=32, steps=100, batch_size=16, tail_size=10, pretrained=pretrained)
    dfc = train_dfc(x, labels, cfg)
    assert dfc.classes == ["d", "h", "v"]
    assert dfc.log["train_accuracy"] > 0.9, dfc.log
    assert isinstance(dfc.net, DFCNet) and dfc.net.pretrained == pretrained
    out = dfc.predict(x)
    assert out["probs"].shape == (90, 4) and out["unknown"].shape == (90,) and out["is_unknown"].shape == (90,)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, rtol=1e-6)
    assert out["is_unknown"].dtype == bool and len(out["predicted"]) == 90
    assert all(p == UNKNOWN if u else p == c for p, u, c in zip(out["predicted"], out["is_unknown"], out["closed_set"]))
    # the threshold is the training crops' 95th percentile of the unknown probability
    assert dfc.threshold == pytest.approx(np.quantile(out["unknown"], 0.95))
    assert out["is_unknown"].mean() == pytest.approx(0.05, abs=0.02)
    x_test, labels_test = stripe_set(20, 10)
    test = dfc.predict(x_test)
    assert np.mean([c == t for c, t in zip(test["closed_set"], labels_test)]) > 0.9
    report = dfc.evaluate(x_test, labels_test, stripes(20, "a", 20))
    assert set(report) >= {"novel_flagged_fraction", "known_false_unknown_rate", "auroc", "known_accuracy"}
    # deterministic given the seed
    again = train_dfc(x, labels, cfg)
    assert again.threshold == dfc.threshold
    np.testing.assert_array_equal(again.predict(x_test)["probs"], test["probs"])


def test_dfc_net_features_and_input_gradient():
    net = DFCNet(3, pretrained=False, hidden=16)
    x = torch.rand(2, 1, 32, 32, requires_grad=True)
    assert net.features(x).shape == (2, 16) and net(x).shape == (2, 3)
    net(x).sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        DFCNet(0, pretrained=False)


# ----------------------------------------------------------------------------- DIS


def test_dis_unet_shapes_loss_and_heat_map():
    torch.manual_seed(0)
    net = DISUNet(in_channels=1, width=8, depth=3)
    x = torch.rand(2, 1, 37, 50)
    assert net(x).shape == (2, 1, 37, 50)  # any size: padded and cropped back
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:5, 2:5] = 1
    perfect = (masks * 2 - 1) * 20
    assert dis_loss(perfect, masks) < 0.05 < dis_loss(-perfect, masks)
    assert soft_dice_loss(perfect, masks) < 0.01 and soft_dice_loss(-perfect, masks) > 0.9
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(torch.full((1, 1, 8, 8), -20.0), empty) < 0.01  # an empty mask wants an empty map
    hm = heat_map(net, np.full((37, 50), 128, np.uint8))
    assert hm.shape == (37, 50) and 0 <= hm.min() and hm.max() <= 1 and net.training
    assert heat_map(net, torch.rand(3, 1, 16, 16)).shape == (3, 16, 16)
    assert heat_map(net, np.zeros((16, 16, 3), np.uint8)).shape == (16, 16)  # RGB -> grey


def test_dis_unet_in_the_segmenter_family_learns():
    from defectfill.downstream.segmenter import (
        ARCHS,
        SegmenterConfig,
        build_model,
        eval_tiles_for,
        evaluate_segmenter,
        train_segmenter,
    )
    from defectfill.downstream.tiles import SourceImage

    assert "dis_unet" in ARCHS
    cfg = SegmenterConfig(arch="dis_unet", base_channels=8, depth=2, crop=32, size=32, steps=80, lr=3e-3,
                          log_every=40, batch_size=8)
    model = build_model(cfg)
    assert isinstance(model, DISUNet)
    a, b = build_model(cfg).state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # drawn from cfg.seed
    def toy(n, seed):  # noisy flat fabric with dark discs
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:64, :96]
        out = []
        for i in range(n):
            img = 0.6 + 0.06 * rng.standard_normal((64, 96))
            mask = (yy - rng.integers(8, 56)) ** 2 + (xx - rng.integers(8, 88)) ** 2 <= rng.uniform(9, 25)
            img[mask] -= 0.3
            out.append(SourceImage(f"s{seed}_{i}", np.clip(img * 255, 0, 255).astype(np.uint8), mask, f"s{seed}_{i}",
                                   "real"))
        return out

    trained, _ = train_segmenter(cfg, toy(8, 0))
    result = evaluate_segmenter(trained, eval_tiles_for(cfg, toy(4, 1)))
    assert result["pixel_ap"] > 0.5 > 20 * result["pixel_positive_rate"], result


@pytest.mark.parametrize("space, dim", [("embedding", 16), ("encoder", 64), ("logits", 3)])
def test_openmax_space_picks_the_vectors_whose_distances_are_modelled(space, dim):
    x, labels = stripe_set(12, 0)
    cfg = DFCConfig(crop=32, size=32, steps=30, batch_size=12, tail_size=5, hidden=16, pretrained=False,
                    openmax_space=space)
    dfc = train_dfc(x, labels, cfg)
    assert dfc.openmax.means.shape == (3, dim)  # the small CNN's pooled encoder features are 64-d
    f, z, probs = dfc.scores(x)
    assert f.shape == (36, dim) and z.shape == (36, 3)
    if space == "logits":
        np.testing.assert_allclose(f, z)
    with pytest.raises(Exception, match="openmax_space"):
        DFCConfig(openmax_space="pixels").validate()
