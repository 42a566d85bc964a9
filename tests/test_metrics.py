"""Generator metrics: Fréchet distance/KID (torchmetrics) vs numpy/scipy, offline feature extractors (default: the
pretrained EfficientNet-Lite0), masked IC-LPIPS, crops."""

import importlib.util

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torchvision
from netguard import refuse_network
from PIL import Image
from safetensors.torch import save_file
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from defectfill.errors import DataError, ModelError
from defectfill.generation.samples import Sample, SampleWriter
from defectfill.metrics import (
    DEFAULT_KIND,
    BackboneFeatures,
    FeatureExtractor,
    RandomConvFeatures,
    crop_around_masks,
    frechet_kid,
    ic_lpips,
    load_dataset_crops,
    load_features,
    load_reference_crops,
    metric_names,
)
from defectfill.metrics.distances import load_perceptual

# ---------------------------------------------------------------------------- FID / KID

PROJ = np.array([[1.0, 0.5, -0.3], [0.2, 1.0, 0.4], [-0.5, 0.3, 1.0]])  # fixed, invertible


class MeanColourFeatures(FeatureExtractor):
    """Test extractor: a fixed linear projection of each image's mean colour (in [0, 1])."""

    name = "mean-colour projection (test)"
    num_features = 3

    def features(self, images):
        return (images.double().mean(dim=(2, 3)) / 255.0) @ torch.from_numpy(PROJ)


def _colour_set(n, seed, offset=0):
    """n 16x16 RGB images: a random per-image colour (+ offset) plus pixel noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=(n, 1, 1, 3)) + offset
    return list(np.clip(base + rng.integers(-30, 31, size=(n, 16, 16, 3)), 0, 255).astype(np.uint8))


def _np_features(images):
    return np.stack(images).astype(np.float64).mean(axis=(1, 2)) / 255.0 @ PROJ


def _np_fid(f1, f2):
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _np_kid(fx, fy):
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018), equal set sizes."""
    m, d = len(fx), fx.shape[1]
    k = lambda a, b: (a @ b.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(fx, fx), k(fy, fy), k(fx, fy)
    off = lambda a: a.sum() - np.trace(a)  # noqa: E731
    return (off(kxx) + off(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / m**2


def test_fid_matches_numpy_scipy():
    real, fake = _colour_set(20, seed=1), _colour_set(24, seed=2, offset=25)
    expected = _np_fid(_np_features(real), _np_features(fake))
    out = frechet_kid(real, fake, MeanColourFeatures(), size=16)
    assert expected > 1e-3
    assert out["frechet_distance"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert (out["n_real"], out["n_fake"], out["size"]) == (20, 24, 16)
    assert out["extractor"] == "mean-colour projection (test)" and out["standard"] is False
    # a non-standard extractor's numbers are never keyed or named FID
    assert not any("fid" in key for key in out)
    assert out["frechet_name"] == "Fréchet distance (mean-colour projection (test) features)"
    assert out["kid_name"] == "KID (mean-colour projection (test) features)"


def test_fid_of_identical_sets_is_zero():
    images = _colour_set(15, seed=3)
    out = frechet_kid(images, images, MeanColourFeatures(), size=16)
    assert out["frechet_distance"] == pytest.approx(0.0, abs=1e-8)


def test_kid_matches_unbiased_polynomial_mmd_by_hand():
    real, fake = _colour_set(16, seed=4), _colour_set(16, seed=5, offset=-20)
    expected = _np_kid(_np_features(real), _np_features(fake))
    out = frechet_kid(real, fake, MeanColourFeatures(), kid_subset_size=16, kid_subsets=5, size=16)
    assert out["kid_mean"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert out["kid_std"] == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set
    assert out["kid_subset_size"] == 16


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_extractor_plugs_into_torchmetrics_directly_and_grey_is_repeated():
    real, fake = _colour_set(12, seed=6), _colour_set(12, seed=7, offset=30)
    f_real, f_fake = _np_features(real), _np_features(fake)
    to_t = lambda ims: torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    fid = FrechetInceptionDistance(feature=MeanColourFeatures(), normalize=False)
    kid = KernelInceptionDistance(feature=MeanColourFeatures(), subsets=2, subset_size=12, normalize=False)
    for metric in (fid, kid):
        metric.update(to_t(real), real=True)
        metric.update(to_t(fake), real=False)
    assert float(fid.compute()) == pytest.approx(_np_fid(f_real, f_fake), rel=1e-6)
    assert float(kid.compute()[0]) == pytest.approx(_np_kid(f_real, f_fake), rel=1e-6, abs=1e-12)

    grey_real, grey_fake = [im[:, :, 0] for im in real], [im[:, :, 1] for im in fake]
    rgb = lambda ims: [np.repeat(g[:, :, None], 3, axis=2) for g in ims]  # noqa: E731
    expected = _np_fid(_np_features(rgb(grey_real)), _np_features(rgb(grey_fake)))
    out = frechet_kid(grey_real, grey_fake, MeanColourFeatures(), size=16)
    assert out["frechet_distance"] == pytest.approx(expected, rel=1e-6)


def test_frechet_kid_rejects_bad_input():
    images = _colour_set(4, seed=8)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_kid(images[:1], images, MeanColourFeatures(), size=16)
    with pytest.raises(ValueError, match="kid_subset_size"):
        frechet_kid(images, images[:3], MeanColourFeatures(), kid_subset_size=4, size=16)
    with pytest.raises(ValueError, match="uint8"):
        frechet_kid([im.astype(np.float32) for im in images], images, MeanColourFeatures(), size=16)


# ---------------------------------------------------------------------------- feature extractors


def test_random_conv_features_are_deterministic_and_offline(monkeypatch):
    refuse_network(monkeypatch)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(3, 3, 48, 40), dtype=np.uint8))
    a = load_features("random")
    torch.manual_seed(123)  # the global RNG must not matter
    b = RandomConvFeatures(seed=0, dim=256)
    fa, fb = a(images), b(images)
    assert fa.shape == (3, 256) and torch.isfinite(fa).all()
    assert torch.equal(fa, fb)
    assert not torch.allclose(fa, RandomConvFeatures(seed=1)(images))
    assert a.standard is False and "RANDOM" in a.name and "NOT FID/KID" in a.name
    assert a.num_features == 256 and not a.training
    out = frechet_kid(_colour_set(6, 9), _colour_set(6, 10, offset=40), a)
    assert out["frechet_distance"] > 0 and out["standard"] is False and "RANDOM" in out["extractor"]
    assert out["frechet_name"] == "Fréchet distance (seed-0 RANDOM conv features)"


def test_metric_names_call_only_the_standard_network_fid():
    class Standard(MeanColourFeatures):
        standard = True
        label = "TF-FID Inception-v3"

    class Other(MeanColourFeatures):
        label = "EfficientNet-Lite0"

    assert metric_names(Standard()) == {"frechet": "FID", "kid": "KID"}
    assert metric_names(Other()) == {"frechet": "Fréchet distance (EfficientNet-Lite0 features)",
                                     "kid": "KID (EfficientNet-Lite0 features)"}
    images = _colour_set(6, seed=11)
    assert frechet_kid(images, images, Standard(), size=16)["frechet_name"] == "FID"


# ---------------------------------------------------------------------------- pretrained backbone features


def _smooth_set(n, seed, size=64):
    """n smooth images: a random colour plus a gentle random gradient (no high frequencies)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = []
    for _ in range(n):
        colour = rng.uniform(60, 190, 3)
        slope = rng.uniform(-40, 40, (2, 3))
        out.append(np.clip(colour + yy[..., None] * slope[0] + xx[..., None] * slope[1], 0, 255).astype(np.uint8))
    return out


def _noise_set(n, seed, size=64):
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def lite0_features():
    mp = pytest.MonkeyPatch()
    refuse_network(mp)
    try:
        return load_features()  # the default kind
    finally:
        mp.undo()


def test_default_features_are_the_pretrained_backbone(lite0_features):
    from defectfill.backbones import PRETRAINED_NAME

    assert DEFAULT_KIND == "efficientnet-lite0" and isinstance(lite0_features, BackboneFeatures)
    assert lite0_features.name.startswith(PRETRAINED_NAME) and "RANDOM" not in lite0_features.name
    assert lite0_features.num_features == 1280 and lite0_features.standard is False
    assert lite0_features.label == "EfficientNet-Lite0" and not lite0_features.training
    assert metric_names(lite0_features)["frechet"] == "Fréchet distance (EfficientNet-Lite0 features)"
    # the features are the backbone's pooled head at 224 px, with images scaled to [0, 1]
    images = torch.from_numpy(np.stack(_noise_set(2, seed=1, size=224))).permute(0, 3, 1, 2).contiguous()
    from defectfill.backbones import Backbone

    with torch.no_grad():
        expected = Backbone(pretrained=True).pooled(images.float() / 255)
    torch.testing.assert_close(lite0_features(images), expected)
    random = BackboneFeatures(pretrained=False)
    assert "RANDOM" in random.name and "RANDOM" in metric_names(random)["frechet"]


def test_backbone_frechet_kid_separate_noise_from_smooth_images(lite0_features):
    smooth = _smooth_set(16, seed=2)
    half_a, half_b, noise = smooth[:8], smooth[8:], _noise_set(8, seed=3)
    same = frechet_kid(half_a, half_a, lite0_features, kid_subsets=10)
    within = frechet_kid(half_a, half_b, lite0_features, kid_subsets=10)
    across = frechet_kid(half_a, noise, lite0_features, kid_subsets=10)
    assert same["size"] == 224 and same["frechet_name"] == "Fréchet distance (EfficientNet-Lite0 features)"
    assert abs(same["frechet_distance"]) < 1e-3 * across["frechet_distance"]
    assert across["frechet_distance"] > 2 * within["frechet_distance"] > 0
    # (the unbiased KID of a set against itself is not exactly 0 at 8 images: only the ordering is asserted)
    assert across["kid_mean"] > 2 * max(within["kid_mean"], same["kid_mean"], 0)


def test_inception_features_load_a_local_state_dict(tmp_path, monkeypatch):
    torch.manual_seed(0)
    ref = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
    path = tmp_path / "inception_v3.pth"
    torch.save(ref.state_dict(), path)
    refuse_network(monkeypatch)
    extractor = load_features("inception", path)
    assert extractor.num_features == 2048 and extractor.standard is False
    assert "close to but not the TF-FID network" in extractor.name
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, size=(2, 3, 80, 96), dtype=np.uint8))
    feats = extractor(images)
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()

    pooled = {}  # independent reference: the seeded net's pool3 output via a hook
    ref.avgpool.register_forward_hook(lambda mod, inp, out: pooled.update(v=out.flatten(1)))
    x = F.interpolate(images.float() / 255.0, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        ref(x * 2 - 1)
    torch.testing.assert_close(feats, pooled["v"], rtol=1e-4, atol=1e-5)

    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("AuxLogits")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    fid_like = tmp_path / "pt_inception-like.safetensors"
    save_file(state, str(fid_like))
    with pytest.raises(ModelError, match="fid-inception"):
        load_features("inception", fid_like)


def test_feature_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope_inception.pth"
    with pytest.raises(ModelError, match="nope_inception.pth"):
        load_features("inception", missing)
    with pytest.raises(ModelError, match="nope_inception.pth"):
        load_features("fid-inception", missing)
    with pytest.raises(ModelError, match="needs a local weights file"):
        load_features("inception", None)
    wrong = tmp_path / "weights.bin"
    wrong.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"weights\.bin.*\.safetensors or \.pth"):
        load_features("inception", wrong)
    bogus = tmp_path / "bogus.pth"
    torch.save({"foo.weight": torch.zeros(2)}, bogus)
    with pytest.raises(ModelError, match="bogus.pth.*inception_v3"):
        load_features("inception", bogus)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        load_features("clip")
    with pytest.raises(ValueError, match="takes no weights"):
        load_features("random", bogus)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_fid_inception_without_torch_fidelity_says_so(tmp_path):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({}, weights)
    with pytest.raises(ModelError, match="torch-fidelity"):
        load_features("fid-inception", weights)


# ---------------------------------------------------------------------------- IC-LPIPS


class L1Map(torch.nn.Module):
    """Stand-in 'spatial LPIPS': per-pixel mean absolute difference, (B, 1, H, W)."""

    spatial = True

    def forward(self, a, b, normalize=True):
        return (a - b).abs().mean(dim=1, keepdim=True)


def _np_ic_l1(gen, gmask, real, rmask):
    """IC-LPIPS by hand with the L1 map: nearest-real clusters, mean pairwise distance over mask unions."""
    g, r = gen.astype(np.float64) / 255, real.astype(np.float64) / 255

    def dist(a, b, ma, mb):
        union = ma | mb
        return (np.abs(a - b).mean(axis=-1) * union).sum() / union.sum()

    d = np.array([[dist(g[i], r[j], gmask[i], rmask[j]) for j in range(len(r))] for i in range(len(g))])
    labels = d.argmin(axis=1)
    values = []
    for c in range(len(r)):
        members = np.flatnonzero(labels == c)
        if len(members) >= 2:
            values.append(np.mean([dist(g[a], g[b], gmask[a], gmask[b])
                                   for i, a in enumerate(members) for b in members[i + 1:]]))
    return float(np.mean(values)), len(values)


@pytest.fixture(scope="module", params=["lpips-lite0", "lpips"])
def perceptual(request):
    """The default LPIPS-style network (pretrained EfficientNet-Lite0) and the explicit random-AlexNet LPIPS."""
    mp = pytest.MonkeyPatch()
    refuse_network(mp)
    try:
        return load_perceptual(request.param)
    finally:
        mp.undo()


def _masks(n, h, w, seed):
    rng = np.random.default_rng(seed)
    m = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
        m[i, y:y + int(rng.integers(4, 9)), x:x + int(rng.integers(4, 9))] = True
    return m


def test_ic_lpips_clustering_matches_hand_computation():
    rng = np.random.default_rng(0)
    real = np.stack([np.full((24, 24, 3), v, np.uint8) for v in (30, 120, 220)])
    real = np.clip(real + rng.integers(-10, 11, size=real.shape), 0, 255).astype(np.uint8)
    centres = [30] * 4 + [120] * 3 + [220]  # clusters of 4, 3 and 1 (skipped)
    gen = np.stack([np.clip(c + rng.integers(-40, 41, size=(24, 24, 3)), 0, 255) for c in centres]).astype(np.uint8)
    gmask, rmask = _masks(len(gen), 24, 24, seed=1), _masks(3, 24, 24, seed=2)
    expected, used = _np_ic_l1(gen, gmask, real, rmask)
    out = ic_lpips(gen, real, L1Map(), "L1 stand-in", gmask, rmask, batch_size=5)
    assert out["value"] == pytest.approx(expected, rel=1e-6)
    assert (out["clusters_used"], out["clusters_skipped"], out["k"], out["n_generated"]) == (used, 1, 3, 8)
    assert out["cluster_sizes"] == [4, 3, 1] and out["cluster_values"][2] is None
    assert out["region"] == "union of the two defect masks" and out["lpips"] == "L1 stand-in"


def test_ic_lpips_identical_samples_zero_and_more_varied_larger(perceptual):
    model, description = perceptual
    rng = np.random.default_rng(3)
    base = rng.integers(60, 190, size=(48, 48, 3))
    real = np.stack([base, 255 - base]).astype(np.uint8)
    mask = np.zeros((48, 48), bool)
    mask[12:36, 10:40] = True
    gmasks, rmasks = np.repeat(mask[None], 6, 0), np.repeat(mask[None], 2, 0)

    same = np.repeat(base[None].astype(np.uint8), 6, axis=0)
    out = ic_lpips(same, real, model, description, gmasks, rmasks)
    assert out["value"] == pytest.approx(0.0, abs=1e-7) and out["clusters_used"] == 1
    assert out["lpips"] == description
    assert ("RANDOM" in description) == description.startswith("lpips-alex")  # only the explicit option is random

    def varied(amplitude):
        noise = rng.integers(-amplitude, amplitude + 1, size=(6, 48, 48, 3))
        return np.clip(base[None] + noise, 0, 255).astype(np.uint8)

    low = ic_lpips(varied(8), real, model, description, gmasks, rmasks)["value"]
    high = ic_lpips(varied(60), real, model, description, gmasks, rmasks)["value"]
    assert 0 < low < high


def test_ic_lpips_mask_restriction_ignores_outside_differences(perceptual):
    model, description = perceptual
    rng = np.random.default_rng(4)
    h, w = 48, 320
    base = rng.integers(60, 190, size=(h, w, 3))
    mask = np.zeros((h, w), bool)
    mask[16:32, 8:40] = True
    gen = np.repeat(base[None], 4, axis=0)
    gen[:, :, 250:] = rng.integers(0, 256, size=(4, h, w - 250, 3))  # differ > 200 px from the mask
    gen = gen.astype(np.uint8)
    real = base[None].astype(np.uint8)
    gmasks, rmasks = np.repeat(mask[None], 4, 0), mask[None]
    outside = ic_lpips(gen, real, model, description, gmasks, rmasks)["value"]
    assert ic_lpips(gen, real, model, description)["value"] > 1e-3  # unmasked: the differences count

    inside = gen.copy()
    inside[:, 16:32, 8:40] = rng.integers(0, 256, size=(4, 16, 32, 3))
    value = ic_lpips(inside, real, model, description, gmasks, rmasks)["value"]
    assert value > 1e-3 and outside == pytest.approx(0.0, abs=1e-4 * value)


def test_ic_lpips_rejects_bad_input():
    gen, real = np.zeros((3, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)
    m = np.ones((3, 8, 8), bool)
    with pytest.raises(ValueError, match="lpips_description"):
        ic_lpips(gen, real, L1Map(), "")
    with pytest.raises(ValueError, match="or neither"):
        ic_lpips(gen, real, L1Map(), "x", generated_masks=m)
    with pytest.raises(ValueError, match="differ"):
        ic_lpips(gen, np.zeros((2, 9, 8, 3), np.uint8), L1Map(), "x")
    with pytest.raises(ValueError, match="empty"):
        ic_lpips(gen, real, L1Map(), "x", np.zeros((3, 8, 8), bool), np.ones((2, 8, 8), bool))


# ---------------------------------------------------------------------------- defect-centred crops


def _line_scan(seed=0, h=256, w=4096):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_crop_around_masks_on_a_line_scan():
    image = _line_scan()
    mask = np.zeros((256, 4096), bool)
    mask[100:120, 1000:1040] = True  # bbox centre (x 1020, y 110); full height available
    crop, cmask = crop_around_masks(image, mask, 256)
    np.testing.assert_array_equal(crop, image[0:256, 892:1148])
    np.testing.assert_array_equal(cmask, mask[0:256, 892:1148])

    small, smask = crop_around_masks(image, mask, 64)  # 64 px window around the bbox
    np.testing.assert_array_equal(small, image[78:142, 988:1052])
    assert smask.sum() == mask.sum()

    edge = np.zeros((256, 4096), bool)
    edge[5:10, 4090:4096] = True  # clamped inside the image
    crop, _ = crop_around_masks(image[:, :, 0], edge, 128)
    np.testing.assert_array_equal(crop, image[0:128, 3968:4096, 0])


def test_crop_around_masks_large_defect_is_resized_whole():
    image = _line_scan(1)
    mask = np.zeros((256, 4096), bool)
    mask[120:130, 2000:2600] = True  # 600 px long > 256 px height: reflect-padded, resized to 128
    crop, cmask = crop_around_masks(image, mask, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8 and cmask.shape == (128, 128)
    cols, rows = np.flatnonzero(cmask.any(axis=0)), np.flatnonzero(cmask.any(axis=1))
    assert cols[0] == 0 and cols[-1] == 127  # the whole 600 px defect spans the crop
    # 600 px window, image reflect-padded by 172 px on top: defect rows 120..130 -> 292..302 of 600
    # -> rows floor(292 * 128 / 600) = 62 .. ceil(302 * 128 / 600) - 1 = 64 after resizing
    np.testing.assert_array_equal(rows, [62, 63, 64])


def test_load_generated_and_reference_crops(tmp_path):
    rng = np.random.default_rng(5)
    writer = SampleWriter(tmp_path / "gen", ["hole", "knot"], contact_sheet_samples=0)
    truth = {}
    for i, cls in enumerate(["hole", "knot", "hole"]):
        image = rng.integers(0, 256, size=(64, 512), dtype=np.uint8)
        mask = np.zeros((64, 512), bool)
        mask[20:30, 100 + 120 * i:115 + 120 * i] = True
        writer.write(Sample(f"s{i}", image, mask, cls, sidecar={"seed": i}))
        truth[f"s{i}"] = (np.repeat(image[:, :, None], 3, axis=2), mask)
    writer.write_rejected(Sample("bad", truth["s0"][0], truth["s0"][1], "hole"), reason="test")
    crops = load_dataset_crops(tmp_path / "gen", 48)
    assert crops.names == ["s0", "s1", "s2"] and crops.images.shape == (3, 48, 48, 3)
    for k, name in enumerate(crops.names):
        img, msk = crop_around_masks(*truth[name], 48)
        np.testing.assert_array_equal(crops.images[k], img)
        np.testing.assert_array_equal(crops.masks[k], msk)
    assert load_dataset_crops(tmp_path / "gen", 48, defect_class="knot").names == ["s1"]

    ref = tmp_path / "ref"
    (ref / "images").mkdir(parents=True)
    (ref / "masks").mkdir()
    for name, (img, msk) in truth.items():
        Image.fromarray(img).save(ref / "images" / f"{name}.png")
        Image.fromarray(msk.astype(np.uint8) * 255).save(ref / "masks" / f"{name}.png")
    rcrops = load_reference_crops(ref, 48)
    assert rcrops.names == crops.names
    np.testing.assert_array_equal(rcrops.images, crops.images)
    np.testing.assert_array_equal(rcrops.masks, crops.masks)

    (tmp_path / "gen" / "masks" / "s1.png").unlink()
    with pytest.raises(DataError, match="s1.png"):
        load_dataset_crops(tmp_path / "gen", 48)
    with pytest.raises(DataError, match="sidecars"):
        load_dataset_crops(ref, 48)
