"""Low-Fidelity Selection (DefectFill Sec. 3.3): masked distances, selection, offline perceptual networks
(default: LPIPS-style on the pretrained EfficientNet-Lite0; the lpips package's AlexNet as an explicit option)."""

import socket
import warnings

import pytest
import torch
import torchvision
from netguard import refuse_network
from safetensors.torch import save_file

from defectfill.diffusion.selection import low_fidelity_selection
from defectfill.metrics import BackbonePerceptual
from defectfill.metrics.distances import (
    DEFAULT_MEASURE,
    MEASURES,
    PAPER_MEASURE,
    load_lpips,
    load_perceptual,
    masked_distance,
    masked_lpips_distance,
    masked_mean,
    ssim_map,
)


@pytest.fixture(scope="module")
def models():
    """The network of every measure (None for the pixel measures), built offline once."""
    mp = pytest.MonkeyPatch()
    refuse_network(mp)
    try:
        return {m: load_perceptual(m)[0] for m in MEASURES}
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def lpips_model(models):
    return models["lpips"]


def _scene(size=64, seed=0):
    """A textured clean image in [0.25, 0.75], a noise pattern in [-1, 1] and a square mask."""
    g = torch.Generator().manual_seed(seed)
    clean = 0.25 + 0.5 * torch.rand(3, size, size, generator=g)
    noise = torch.rand(3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[size // 4 : size // 2, size // 4 : size // 2] = True
    return clean, noise, mask


AMPLITUDES = [0.1, 0.4, 0.05, 0.2]  # candidate 1 carries the strongest defect


def _candidates(clean, pattern, region, amplitudes=AMPLITUDES):
    return torch.stack([(clean + a * pattern * region).clamp(0, 1) for a in amplitudes])


# ------------------------------------------------------------------ selection picks the most visible defect


@pytest.mark.parametrize("measure", MEASURES)
def test_picks_strongest_in_mask_perturbation(measure, models):
    clean, noise, mask = _scene()
    cands = _candidates(clean, noise, mask)
    best, scores = low_fidelity_selection(cands, clean, mask, measure, models[measure])
    assert best == 1
    assert len(scores) == len(AMPLITUDES) and all(isinstance(s, float) for s in scores)
    # scores rank the candidates by perturbation amplitude
    assert sorted(range(4), key=scores.__getitem__) == sorted(range(4), key=AMPLITUDES.__getitem__)


def test_default_is_the_pretrained_lite0_and_the_paper_measure_is_lpips(models):
    assert DEFAULT_MEASURE == "lpips-lite0" and PAPER_MEASURE == "lpips"
    clean, noise, mask = _scene()
    cands = _candidates(clean, noise, mask)
    with pytest.raises(ValueError, match=r"load_perceptual\('lpips-lite0'\)"):
        low_fidelity_selection(cands, clean, mask)  # the default needs its model
    assert low_fidelity_selection(cands, clean, mask, lpips_model=models["lpips-lite0"])[0] == 1
    with pytest.raises(ValueError, match="got a LPIPS model"):  # a model of the other measure is refused
        low_fidelity_selection(cands, clean, mask, "lpips-lite0", models["lpips"])
    with pytest.raises(ValueError, match="got a BackbonePerceptual model"):
        low_fidelity_selection(cands, clean, mask, "lpips", models["lpips-lite0"])


def test_load_perceptual_builds_each_measures_network_offline(monkeypatch, models):
    refuse_network(monkeypatch)
    model, desc = load_perceptual()
    assert isinstance(model, BackbonePerceptual) and model.spatial and not model.training
    assert "efficientnet-lite0 (ImageNet" in desc and "RANDOM" not in desc
    _, lpips_desc = load_perceptual("lpips")
    assert lpips_desc == load_lpips("alex")[1] and "RANDOM" in lpips_desc  # explicit option, says so
    assert load_perceptual("ssim") == (None, None)
    with pytest.raises(ValueError, match="choose 'lpips' or drop lpips_weights"):
        load_perceptual("lpips-lite0", lpips_weights="alexnet.pth")  # would silently go unused
    with pytest.raises(ValueError, match="unknown measure"):
        load_perceptual("dists")


def test_l1_l2_equal_offset_inside_mask():
    clean, _, mask = _scene()
    offsets = [0.05, 0.2, 0.1]
    cands = torch.stack([clean + d * mask for d in offsets])  # stays within [0.25, 0.95]
    l1 = masked_distance(cands, clean, mask, "l1")
    l2 = masked_distance(cands, clean, mask, "l2")
    torch.testing.assert_close(l1, torch.tensor(offsets))
    torch.testing.assert_close(l2, torch.tensor(offsets) ** 2)


@pytest.mark.parametrize("measure", MEASURES)
def test_clean_vs_itself_is_zero(measure, models):
    clean, _, mask = _scene()
    scores = masked_distance(clean[None].repeat(2, 1, 1, 1), clean, mask, measure, models[measure])
    assert scores.shape == (2,)
    assert scores.abs().max() < 1e-6


# ------------------------------------------------------------------ the measure is restricted to the mask


@pytest.mark.parametrize("measure", ["l1", "l2", "ssim"])
def test_pixel_measures_ignore_changes_outside_mask(measure):
    clean, noise, mask = _scene(64)
    far = torch.zeros_like(mask)
    far[-12:, -12:] = True  # > 5 px (SSIM window radius) from the mask
    cands = torch.stack([(clean + 0.5 * noise * far).clamp(0, 1), (clean + 0.5 * noise * mask).clamp(0, 1)])
    scores = masked_distance(cands, clean, mask, measure)
    assert scores[0] < 1e-6
    assert scores[1] > 0.05


@pytest.mark.parametrize("measure,size,ratio", [("lpips", 128, 0.05), ("lpips-lite0", 256, 0.001)])
def test_perceptual_far_outside_change_scores_much_less_than_inside(measure, size, ratio, models):
    clean, noise, _ = _scene(size)
    corner = torch.zeros(size, size, dtype=torch.bool)
    corner[4:36, 4:36] = True  # mask in the top-left corner
    opposite = corner.flip(0).flip(1)  # the same change in the bottom-right corner
    cands = torch.stack([(clean + 0.4 * noise * region).clamp(0, 1) for region in (opposite, corner)])
    outside, inside = masked_lpips_distance(cands, clean, corner, models[measure]).tolist()
    assert inside > 0
    assert outside < ratio * inside
    best, _ = low_fidelity_selection(cands, clean, corner, measure, models[measure])
    assert best == 1  # the candidate whose change is inside the mask


def test_lite0_score_is_eq1_restricted_to_the_mask(models):
    model = models["lpips-lite0"]
    clean, noise, mask = _scene(64)
    cands = _candidates(clean, noise, mask, [0.1, 0.3])
    full_map = model(cands, clean[None])  # (K, 1, H, W); the mask's pixels averaged by hand
    expected = full_map[:, 0][:, mask].mean(dim=1)
    torch.testing.assert_close(masked_lpips_distance(cands, clean, mask, model), expected, rtol=1e-5, atol=1e-6)


def test_ssim_crop_matches_full_image_and_torchmetrics():
    clean, noise, mask = _scene(48)
    cands = _candidates(clean, noise, torch.ones_like(mask), [0.1, 0.3])
    full = masked_mean(1 - ssim_map(cands, clean[None]), mask[None, None].float())
    torch.testing.assert_close(masked_distance(cands, clean, mask, "ssim"), full)
    tm = pytest.importorskip("torchmetrics.functional.image")
    _, ref_map = tm.structural_similarity_index_measure(
        cands, clean[None].expand(2, -1, -1, -1), data_range=1.0, return_full_image=True, reduction="none"
    )
    inner = (..., slice(6, -6), slice(6, -6))  # away from the differently padded borders
    ours = ssim_map(cands, clean[None])[inner]
    torch.testing.assert_close(ours, ref_map.mean(1, keepdim=True)[inner], atol=1e-5, rtol=0)


def test_masked_mean_resamples_mask_to_a_smaller_map():
    dmap = torch.zeros(1, 1, 8, 8)
    dmap[..., :4] = 1.0  # left half of a half-resolution map
    for cols, expected in [((0, 8), 1.0), ((12, 16), 0.0), ((4, 12), 0.5)]:
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., cols[0] : cols[1]] = 1
        assert masked_mean(dmap, mask).item() == pytest.approx(expected)


def test_lpips_map_smaller_than_image_is_handled():
    class HalfResModel(torch.nn.Module):  # a "spatial" model returning a half-resolution map
        spatial = True

        def forward(self, in0, in1, normalize=False):
            return torch.nn.functional.avg_pool2d((in0 - in1).abs().mean(1, keepdim=True), 2)

    clean, _, mask = _scene(32)  # mask rows/cols 8:16, aligned with the 2x2 cells
    cands = torch.stack([clean + 0.1 * mask, clean + 0.2 * mask])
    torch.testing.assert_close(masked_lpips_distance(cands, clean, mask, HalfResModel()), torch.tensor([0.1, 0.2]))


# ------------------------------------------------------------------ ties, shapes, grayscale


def test_tie_break_is_lowest_index():
    clean, noise, mask = _scene()
    same = _candidates(clean, noise, mask, [0.3, 0.3, 0.3])
    assert low_fidelity_selection(same, clean, mask, "l1")[0] == 0
    tied_max = _candidates(clean, noise, mask, [0.1, 0.3, 0.3, 0.2])
    for measure in ("l1", "l2", "ssim"):
        best, scores = low_fidelity_selection(tied_max, clean, mask, measure)
        assert scores[1] == scores[2]
        assert best == 1


@pytest.mark.parametrize("measure", MEASURES)
def test_input_layouts_and_grayscale_agree(measure, models):
    lpips_model = models[measure]
    clean, noise, mask = _scene()
    cands = _candidates(clean, noise, mask)
    ref = masked_distance(cands, clean, mask, measure, lpips_model)
    alt = masked_distance(cands, clean[None], mask[None, None].float(), measure, lpips_model)
    torch.testing.assert_close(alt, ref)
    gray_c, gray_x = cands[:, :1], clean[:1]
    torch.testing.assert_close(
        masked_distance(gray_c, gray_x, mask, measure, lpips_model),
        masked_distance(gray_c.repeat(1, 3, 1, 1), gray_x.repeat(3, 1, 1), mask, measure, lpips_model),
    )


# ------------------------------------------------------------------ errors


def test_errors(lpips_model):
    clean, noise, mask = _scene()
    cands = _candidates(clean, noise, mask)
    with pytest.raises(ValueError, match="mask is empty"):
        low_fidelity_selection(cands, clean, torch.zeros_like(mask), "l1")
    with pytest.raises(ValueError, match="mask is empty"):
        masked_lpips_distance(cands, clean, torch.zeros_like(mask), lpips_model)
    with pytest.raises(ValueError, match="unknown measure 'psnr'"):
        low_fidelity_selection(cands, clean, mask, "psnr")
    with pytest.raises(ValueError, match=r"load_perceptual\('lpips'\)"):
        low_fidelity_selection(cands, clean, mask, "lpips", None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        low_fidelity_selection(cands * 2 - 1, clean, mask, "l1")
    with pytest.raises(ValueError, match="does not match"):
        low_fidelity_selection(cands, clean[:, :32], mask, "l1")
    with pytest.raises(ValueError, match="mask size"):
        low_fidelity_selection(cands, clean, mask[:32], "l1")
    with pytest.raises(ValueError, match="shape"):
        low_fidelity_selection(cands[0], clean, mask, "l1")
    import lpips

    with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation, raised inside lpips
        warnings.simplefilter("ignore", UserWarning)
        non_spatial = lpips.LPIPS(net="alex", spatial=False, pretrained=False, pnet_rand=True, verbose=False)
    with pytest.raises(ValueError, match="spatial=True"):
        masked_lpips_distance(cands, clean, mask, non_spatial)


# ------------------------------------------------------------------ offline LPIPS loading


def test_load_lpips_is_offline_and_reproducible(monkeypatch):
    refuse_network(monkeypatch)
    with pytest.raises(AssertionError, match="network access"):  # the guard works
        socket.create_connection(("example.com", 80))
    a, desc = load_lpips("alex")
    b, _ = load_lpips("alex")
    squeeze, sdesc = load_lpips("squeeze")
    assert desc == "lpips-alex with a RANDOM backbone (offline fallback; not the standard LPIPS)"
    assert "RANDOM" in sdesc and sdesc.startswith("lpips-squeeze")
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert a.spatial
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name  # seeded fallback: the same random backbone every time
    # the calibrated linear layers come from the package, not random init
    import os

    import lpips

    shipped_path = os.path.join(os.path.dirname(lpips.__file__), "weights/v0.1/alex.pth")
    shipped = torch.load(shipped_path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(a.lin0.model[1].weight, shipped["lin0.model.1.weight"])
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        load_lpips("resnet")


def _tv_alexnet_state(seed):
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in torchvision.models.alexnet(weights=None).state_dict().items()}


def _assert_backbone_equals(model, state):
    layers = {name: child for part in model.net.children() for name, child in part.named_children()}
    checked = 0
    for key, value in state.items():
        if key.startswith("features."):
            _, index, rest = key.split(".", 2)
            assert torch.equal(layers[index].state_dict()[rest], value), key
            checked += 1
    return checked


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_lpips_backbone_weights_from_local_file(tmp_path, monkeypatch, suffix):
    refuse_network(monkeypatch)
    state = _tv_alexnet_state(123)
    path = tmp_path / f"alexnet{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    model, desc = load_lpips("alex", backbone_weights=path)
    assert desc == f"lpips-alex (ImageNet backbone from {path})"
    assert _assert_backbone_equals(model, state) == 10  # 5 conv layers x (weight, bias)
    random_model, _ = load_lpips("alex")
    assert not torch.equal(model.net.slice1[0].weight, random_model.net.slice1[0].weight)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_load_lpips_squeezenet_backbone(tmp_path):
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in torchvision.models.squeezenet1_1(weights=None).state_dict().items()}
    path = tmp_path / "squeeze.safetensors"
    save_file(state, str(path))
    model, _ = load_lpips("squeeze", backbone_weights=path)
    assert _assert_backbone_equals(model, state) == sum(k.startswith("features.") for k in state)


def test_load_lpips_backbone_errors(tmp_path):
    state = _tv_alexnet_state(0)
    bad_shape = dict(state, **{"features.0.weight": state["features.0.weight"][:32]})
    save_file(bad_shape, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ValueError, match="features.0 does not fit lpips-alex"):
        load_lpips("alex", backbone_weights=tmp_path / "shape.safetensors")
    missing = {k: v for k, v in state.items() if not k.startswith("features.10.")}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match=r"no weights for backbone layer\(s\) features.\[10\]"):
        load_lpips("alex", backbone_weights=tmp_path / "missing.safetensors")
    save_file({"layer1.weight": state["features.0.weight"]}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="unexpected key 'layer1.weight'"):
        load_lpips("alex", backbone_weights=tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError):
        load_lpips("alex", backbone_weights=tmp_path / "nope.safetensors")
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=".safetensors or .pth"):
        load_lpips("alex", backbone_weights=tmp_path / "w.bin")
