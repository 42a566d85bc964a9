"""DGT baseline: codes, stochastic smoothing, region losses, training (bce / r3gan, grids,
checkpoints, resume, aux hook, the DIS and DFC downstream terms), DGTGenerator (init_args, fit,
from_checkpoint) and generation end to end, a short AITEX run."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from scipy import ndimage

from defectfill.config import load_config
from defectfill.downstream.dis import heat_map
from defectfill.errors import ConfigError
from gan_baselines.dgt.generator import DGTGenerator
from gan_baselines.dgt.model import (
    background_code,
    background_l1,
    blend_l1,
    boundary_band,
    fill_region,
    foreground_code,
    foreground_l1,
    smoothed_codes,
    stochastic_gaussian_smoothing,
)
from gan_baselines.dgt.train import (
    DGTConfig,
    build_downstream,
    build_networks,
    downstream_g_loss,
    load_downstream,
    run_generator,
    train,
)
from gan_baselines.harness import pick_fabric_crops

REPO = Path(__file__).resolve().parents[1]
SMALL_YAML = REPO / "configs" / "generators" / "dgt.yaml"
SMALL = yaml.safe_load(SMALL_YAML.read_text())["init_args"]  # the shipped small config, inline
CLASSES = ["dark_spot", "streak"]  # sorted: class index 0 and 1


# ---- a tiny synthetic reference set ----

def _texture(rng, h, w):
    yy, xx = np.mgrid[:h, :w]
    weave = 6 * np.sin(xx * np.pi / 2) * np.sin(yy * np.pi / 3)
    return 150 + weave + rng.normal(0, 2, (h, w))


def make_dataset(root: Path, n_per_class=3, n_good=3, h=64, w=160) -> Path:
    """Flat woven textures with dark spots / dark horizontal streaks, masks, good/ images,
    manifest.csv naming the two classes."""
    for sub in ("images", "masks", "good"):
        (root / sub).mkdir(parents=True)
    rows = []
    for i in range(2 * n_per_class):
        rng = np.random.default_rng(i)
        img, mask = _texture(rng, h, w), np.zeros((h, w), bool)
        cy, cx = int(rng.integers(16, h - 16)), int(rng.integers(20, w - 20))
        cls = CLASSES[i % 2]
        if cls == "dark_spot":
            yy, xx = np.mgrid[:h, :w]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= int(rng.integers(4, 7)) ** 2
        else:
            mask[cy - 1:cy + 2, cx - 15:cx + 15] = True
        img[mask] = 45 + rng.normal(0, 2, mask.sum())
        name = f"d{i:02d}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        rows.append((name, cls))
    for i in range(n_good):
        img = _texture(np.random.default_rng(100 + i), h, w)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "good" / f"g{i:02d}.png")
    with (root / "manifest.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("id", "defect_type"), *rows])
    return root


def tiny_cfg(data: Path, out: Path, **kw) -> DGTConfig:
    base = {"data_dir": str(data), "output_dir": str(out), "crop_size": 32, "resolution": 32, "batch_size": 4,
            "max_steps": 30, "lr_g": 2e-3, "lr_d": 1e-3, "g_channels": 8, "g_depth": 2, "d_channels": 8, "d_layers": 2,
            "checkpointing_steps": 15, "sample_every": 10, "log_every": 1, "grid_samples": 2, "sigma_max": 1.5,
            "dilation": 3, "dis_width": 8, "dis_depth": 2, "dfc_pretrained": False,
            "dfc_hidden": 16}  # small DIS, CNN DFC: fast
    base.update(kw)
    return DGTConfig(**base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]


def early_late(rows: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in rows]
    return float(np.mean(values[:5])), float(np.mean(values[-5:]))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("dgt") / "data")


# 30 bce steps with a plain (non-residual) generator head (all three L1 terms start high) and the
# ImageNet EfficientNet-Lite0 DFC encoder (learns the two classes within 30 steps; the CNN does not)
BCE_RUN = {"loss": "bce", "residual": False, "dfc_pretrained": True}


@pytest.fixture(scope="module")
def bce_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dgt") / "bce"
    final = train(tiny_cfg(data, out, **BCE_RUN))
    assert final == out / "final"
    return out


# ---- codes and smoothing ----

def test_codes_place_mask_in_its_class_channel():
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1:3, 1:3] = 1
    mask[1, 0, 0, 3] = 1
    f = foreground_code(mask, torch.tensor([2, 0]), num_classes=3)
    assert f.shape == (2, 3, 4, 4)
    expected = torch.zeros(2, 3, 4, 4)
    expected[0, 2, 1:3, 1:3] = 1
    expected[1, 0, 0, 3] = 1
    assert torch.equal(f, expected)
    b = background_code(mask)
    assert b.shape == (2, 1, 4, 4) and b[0, 0, 0, 0] == 1 and b[0, 0, 1, 1] == 0 and b.sum() == 32 - 5
    with pytest.raises(ValueError, match="class labels"):
        foreground_code(mask, torch.tensor([3, 0]), num_classes=3)


def _codes(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(3, 1, 24, 20, generator=g) > 0.7).float()
    labels = torch.tensor([0, 1, 1])
    return torch.cat([foreground_code(mask, labels, 2), background_code(mask)], dim=1), mask, labels


def test_smoothing_range_determinism_and_partition_of_unity():
    code, mask, labels = _codes()
    a = stochastic_gaussian_smoothing(code, torch.Generator().manual_seed(5), (0.5, 3.0), 3)
    b = stochastic_gaussian_smoothing(code, torch.Generator().manual_seed(5), (0.5, 3.0), 3)
    c = stochastic_gaussian_smoothing(code, torch.Generator().manual_seed(6), (0.5, 3.0), 3)
    assert a.shape == code.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert not torch.equal(a, code)  # it does smooth
    assert torch.allclose(a.sum(dim=1), torch.ones(3, 24, 20), atol=1e-5)  # F + B stays a partition
    assert torch.allclose(a[0, 1], torch.zeros(24, 20))  # other-class channel stays empty
    # the compact implementation used in training equals smoothing the full code
    fast = smoothed_codes(mask, labels, 2, torch.Generator().manual_seed(5), (0.5, 3.0), 3)
    assert torch.allclose(fast, a, atol=1e-6)


def test_smoothing_degenerate_sigma_returns_input():
    code, _, _ = _codes(1)
    out = stochastic_gaussian_smoothing(code, torch.Generator().manual_seed(0), (0.0, 0.0), 4)
    assert torch.allclose(out, code, atol=1e-6)


def test_single_kernel_matches_scipy_gaussian_filter():
    """One kernel (weight 1) with a fixed sigma is scipy's Gaussian filter, nearest-edge mode."""
    _, mask, _ = _codes(2)
    out = stochastic_gaussian_smoothing(mask, torch.Generator().manual_seed(0), (1.0, 1.0), 1)
    for i in range(mask.shape[0]):
        ref = ndimage.gaussian_filter(mask[i, 0].numpy().astype(np.float64), 1.0, mode="nearest", truncate=3.0)
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-5)


# ---- region losses and the defect-free input ----

def test_region_l1_losses_by_hand():
    out = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[1.0, 2], [3, 4]], [[-1, -2], [-3, -4]]])[None]
    background = torch.tensor([[[5.0, 6], [7, 8]], [[0, 1], [1, 0]]])[None]
    mask = torch.tensor([[1.0, 0], [0, 1]])[None, None]
    assert foreground_l1(out, target, mask).item() == pytest.approx((1 + 4 + 1 + 4) / 4)
    assert background_l1(out, background, mask).item() == pytest.approx((6 + 7 + 1 + 1) / 4)
    band = torch.tensor([[0.0, 1], [0, 0]])[None, None]
    assert blend_l1(out, target, band).item() == pytest.approx((2 + 2) / 2)
    assert foreground_l1(out, target, torch.zeros_like(mask)).item() == 0.0
    # the foreground term ignores everything outside the mask
    assert foreground_l1(out + 100 * (1 - mask), target, mask).item() == pytest.approx(2.5)


def test_boundary_band_by_hand():
    mask = torch.zeros(1, 1, 7, 7)
    mask[0, 0, 2:5, 2:5] = 1
    band = boundary_band(mask, 1)[0, 0]
    expected = torch.zeros(7, 7)
    expected[1:6, 1:6] = 1
    expected[3, 3] = 0  # the eroded mask
    assert torch.equal(band, expected)
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 1
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 1
    assert torch.equal(boundary_band(dot, 1)[0, 0], expected)


def test_fill_region_replaces_only_the_mask():
    img = np.full((20, 20), 100, np.uint8)
    mask = np.zeros((20, 20), bool)
    mask[6:11, 7:12] = True
    img[mask] = 10
    img[0, 0] = 160  # mean outside = (100 * 374 + 160) / 375
    for method in ("telea", "mean"):
        out = fill_region(img, mask, method)
        assert np.array_equal(out[~mask], img[~mask])
        assert np.abs(out[mask].astype(int) - 100).max() <= 4
    assert (fill_region(img, mask, "mean")[mask] == round((100 * 374 + 160) / 375)).all()
    with pytest.raises(ValueError, match="fill method"):
        fill_region(img, mask, "blur")


def test_pick_fabric_crops_skips_blank_white_crops():
    crops = torch.zeros(5, 1, 4, 4)
    crops[1] = 1.0  # all white
    crops[3, :, :3] = 1.0  # 75 % white
    crops[4, :, :1] = 1.0  # 25 % white: fabric
    for i in range(5):
        crops[i, 0, 3, 3] = i / 10  # tag
    tags = lambda x: [round(float(v), 1) for v in x[:, 0, 3, 3]]
    assert tags(pick_fabric_crops(crops, 3)) == [0.0, 0.2, 0.4]
    assert tags(pick_fabric_crops(crops, 4)) == [0.0, 0.2, 0.4, 0.1]  # blank ones only to fill up


# ---- training ----

def test_bce_training_reduces_l1_terms_writes_grids_and_checkpoints(bce_run):
    rows = metrics(bce_run)
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("loss_fg", "loss_bg", "loss_blend"):
        early, late = early_late(rows, key)
        assert late < 0.8 * early, (key, early, late)
    grids = sorted((bce_run / "samples").glob("samples-*.png"))
    assert [g.name for g in grids] == ["samples-000010.png", "samples-000020.png", "samples-000030.png"]
    with Image.open(grids[-1]) as im:  # 2 reconstruction + 2 transfer rows, 4 columns, 96 px cells
        assert im.size == (4 * 98 + 2, 4 * 98 + 2)
    assert (bce_run / "checkpoint-15" / "model.safetensors").is_file()
    assert not list(bce_run.rglob("*.bin")) and not list(bce_run.rglob("*.pt"))
    config = yaml.safe_load((bce_run / "final" / "config.yaml").read_text())
    assert config["baseline"] == "dgt" and config["defect_classes"] == CLASSES and config["channels"] == 1
    weights = load_file(str(bce_run / "final" / "weights.safetensors"))
    for module in ("G", "D", "DIS", "DFC"):
        assert any(k.startswith(module + ".") for k in weights), module
    assert config["modules"] == ["G", "D", "DIS", "DFC"]
    for key in ("loss_dis", "loss_dfc", "loss_g_dis", "loss_g_dfc"):
        assert all(np.isfinite(r[key]) for r in rows), key
    for key, factor in (("loss_dis", 0.95), ("loss_dfc", 0.9)):  # DIS and DFC learn on real + generated crops
        early, late = early_late(rows, key)
        assert late < factor * early, (key, early, late)


def test_resume_from_checkpoint_replays_the_run(bce_run, data, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(bce_run / "checkpoint-15", out / "checkpoint-15")
    final = train(tiny_cfg(data, out, **BCE_RUN), resume_from_checkpoint="latest")
    assert [r["step"] for r in metrics(out)] == list(range(16, 31))
    a, b = load_file(str(bce_run / "final" / "weights.safetensors")), load_file(str(final / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # stateless per-step data and rng: an exact replay


def test_r3gan_training_residual_generator(data, tmp_path):
    out = tmp_path / "r3gan"
    train(tiny_cfg(data, out, loss="r3gan", gamma=0.5))
    rows = metrics(out)
    assert all(np.isfinite(r["r1"]) and np.isfinite(r["r2"]) for r in rows)
    for key in ("loss_fg", "loss_blend"):
        early, late = early_late(rows, key)
        assert late < 0.8 * early, (key, early, late)
    # the residual head starts from the defect-free input: the background term is small throughout
    assert max(r["loss_bg"] for r in rows) < 0.15
    assert (out / "samples" / "samples-000030.png").is_file()


def test_aux_loss_hook_is_called_and_its_gradient_reaches_g(data, tmp_path):
    calls, grads = [], []

    def aux(output, mask, labels):
        calls.append((tuple(output.shape), tuple(mask.shape), labels.tolist()))
        output.register_hook(lambda g: grads.append(g.abs().sum().item()))
        return (output * mask).mean()

    only_aux = {"max_steps": 2, "lambda_fg": 0.0, "lambda_bg": 0.0, "lambda_blend": 0.0, "lambda_adv": 0.0,
                "lambda_aux": 1.0, "lambda_dis": 0.0, "lambda_dfc": 0.0}
    cfg = tiny_cfg(data, tmp_path / "aux", **only_aux)
    torch.manual_seed(cfg.seed)  # train() seeds like this before building the networks
    g0, _ = build_networks(cfg, 2, 1)
    init = {f"G.{k}": v for k, v in g0.state_dict().items()}
    with_aux = load_file(str(train(cfg, aux_loss_fn=aux) / "weights.safetensors"))
    without = load_file(str(train(tiny_cfg(data, tmp_path / "noaux", **only_aux)) / "weights.safetensors"))
    assert len(calls) == 2
    assert calls[0][0] == (8, 1, 32, 32) and calls[0][1] == (8, 1, 32, 32)
    assert set(calls[0][2]) <= {0, 1}
    assert len(grads) == 2 and all(g > 0 for g in grads)
    assert all(torch.equal(without[k], init[k]) for k in init)  # no loss on G: G stays at its init
    assert any(not torch.equal(with_aux[k], init[k]) for k in init)  # the aux gradient moved G
    assert not any(k.startswith(("DIS.", "DFC.")) for k in without)  # lambda 0: no DIS / DFC module
    rows = metrics(tmp_path / "noaux")
    assert not any(k in r for r in rows for k in ("loss_dis", "loss_dfc", "loss_g_dis", "loss_g_dfc"))


@pytest.mark.parametrize("dfc_pretrained", [False, True])
def test_each_downstream_term_reaches_g(data, dfc_pretrained):
    """lambda_dis * dis_loss(DIS(G(...)), mask) and lambda_dfc * CE(DFC(G(...)), class) each put a
    gradient on G's parameters on their own (through the frozen ImageNet encoder too); lambda 0: none."""
    cfg = tiny_cfg(data, data / "unused", dfc_pretrained=dfc_pretrained)
    torch.manual_seed(0)
    g, _ = build_networks(cfg, 2, 1)
    modules = build_downstream(cfg, 2, 1)
    assert set(modules) == {"DIS", "DFC"}
    background = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    masks = torch.zeros(4, 1, 32, 32)
    masks[:, :, 10:20, 12:22] = 1
    labels = torch.tensor([0, 1, 0, 1])

    def g_grad(lambda_dis: float, lambda_dfc: float) -> tuple[float, dict]:
        g.zero_grad(set_to_none=True)
        fake = run_generator(g, background, masks, labels, 2, cfg, torch.Generator().manual_seed(0))
        c = dataclasses.replace(cfg, lambda_dis=lambda_dis, lambda_dfc=lambda_dfc)
        loss, parts = downstream_g_loss(fake, masks, labels, modules["DIS"], modules["DFC"], c)
        (loss + 0.0 * fake.sum()).backward()  # the zero term keeps backward valid when nothing is on
        return sum(float(p.grad.abs().sum()) for p in g.parameters() if p.grad is not None), parts

    dis_only, parts = g_grad(1.0, 0.0)
    assert dis_only > 0 and set(parts) == {"loss_g_dis"}
    dfc_only, parts = g_grad(0.0, 1.0)
    assert dfc_only > 0 and set(parts) == {"loss_g_dfc"}
    both, parts = g_grad(0.0, 0.0)
    assert both == 0.0 and parts == {}
    assert g_grad(2.0, 0.0)[0] == pytest.approx(2 * dis_only, rel=1e-4)  # the weight scales the term


# ---- the Generator interface: init_args, fit, from_checkpoint ----

def test_init_args_fit_writes_dis_and_dfc_and_from_checkpoint_synthesizes(woven_root, tmp_path):
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.generators import build_unfitted

    small = {"max_steps": 2, "crop_size": 32, "resolution": 32, "batch_size": 2, "g_channels": 8, "g_depth": 2,
             "d_channels": 8, "d_layers": 2, "checkpointing_steps": 100, "sample_every": 100, "log_every": 1,
             "dis_width": 8, "dis_depth": 2}
    gen = DGTGenerator.from_init_args({**SMALL, **small})
    assert not gen.fitted and gen.cfg.max_steps == 2 and gen.cfg.g_channels == 8
    assert gen.cfg.lambda_dis == 1.0 and gen.cfg.dfc_pretrained  # from the YAML: the ImageNet DFC encoder
    clean = np.asarray(Image.open(min((woven_root / "good").iterdir())))
    yy, xx = np.mgrid[:clean.shape[0], :clean.shape[1]]
    mask = (yy - 60) ** 2 + (xx - 200) ** 2 <= 25
    with pytest.raises(RuntimeError, match="not fitted"):
        gen.synthesize(clean, mask, seed=0)

    final = gen.fit(load_reference_dataset(woven_root), tmp_path / "fit", seed=0)
    assert final == tmp_path / "fit" / "final" and gen.fitted
    weights = load_file(str(final / "weights.safetensors"))
    for module in ("G", "D", "DIS", "DFC"):
        assert any(k.startswith(module + ".") for k in weights), module
    config = yaml.safe_load((final / "config.yaml").read_text())
    assert config["data_dir"] == str(woven_root) and config["seed"] == 0 and config["max_steps"] == 2
    rows = metrics(tmp_path / "fit")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(k in rows[-1] for k in ("loss_dis", "loss_dfc", "loss_g_dis", "loss_g_dfc"))

    loaded = DGTGenerator.from_checkpoint(final)  # loads G only
    a, info = loaded.synthesize(clean, mask, seed=1)
    b, _ = gen.synthesize(clean, mask, seed=1)  # fit loaded the trained G into the instance
    assert a.shape == clean.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert info["defect_class_used"] in config["defect_classes"]
    assert isinstance(build_unfitted("dgt", {"max_steps": 2}), DGTGenerator)

    downstream = load_downstream(final)  # the trained DIS and DFC
    crop = torch.from_numpy(clean[:32, :32].astype(np.float32) / 255)[None, None]
    assert heat_map(downstream["DIS"], crop).shape == (1, 32, 32)
    assert downstream["DFC"](crop).shape == (1, len(config["defect_classes"]))
    assert torch.equal(downstream["DIS"].head.weight, weights["DIS.head.weight"])


def test_init_args_errors(tmp_path):
    with pytest.raises(ConfigError, match="max_step, nope"):
        DGTGenerator.from_init_args({"max_step": 2, "nope": 1})
    with pytest.raises(ConfigError, match="input_fill"):
        DGTGenerator.from_init_args({"input_fill": "blur"})
    with pytest.raises(ConfigError, match="lambda_dis"):
        DGTGenerator.from_init_args({"lambda_dis": -1})
    with pytest.raises(ConfigError) as err:  # the old second YAML: its keys go inline now
        DGTGenerator.from_init_args({"config": "configs/gan/dgt_small.yaml", "max_steps": 2})
    assert str(err.value).startswith("dgt: init_args.config (configs/gan/dgt_small.yaml) is no longer read: write "
                                     "that file's keys inline under init_args")
    assert "configs/generators/dgt.yaml" in str(err.value)
    gen = DGTGenerator.from_init_args({**SMALL, "lambda_dfc": 0, "max_samples": None})
    assert gen.cfg.lambda_dfc == 0 and gen.cfg.resolution == 64 and gen.cfg.max_samples is None
    DGTGenerator.check_init_args({"max_steps": 5})


# ---- inference ----

def test_synthesize_preserves_background_and_is_deterministic(bce_run):
    gen = DGTGenerator.from_checkpoint(bce_run / "final")
    assert gen.name == "dgt" and gen.preserves_background and gen.dilation == 3
    clean = np.clip(_texture(np.random.default_rng(7), 128, 512), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:128, :512]
    mask = (yy - 60) ** 2 + (xx - 300) ** 2 <= 36
    a, info = gen.synthesize(clean, mask, seed=3, defect_class="streak")
    b, _ = gen.synthesize(clean, mask, seed=3, defect_class="streak")
    c, _ = gen.synthesize(clean, mask, seed=4, defect_class="streak")
    assert a.dtype == np.uint8 and a.shape == clean.shape
    far = ndimage.distance_transform_edt(~mask) > gen.dilation
    assert np.array_equal(a[far], clean[far])
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a[mask], clean[mask])
    assert info["defect_class_used"] == "streak" and info["defect_class_index"] == 1
    with pytest.raises(ValueError, match="dark_spot, streak"):
        gen.synthesize(clean, mask, seed=3, defect_class="hole")


def test_run_generation_end_to_end(bce_run, data, tmp_path):
    from defectfill.config import GenerateConfig
    from defectfill.generation.run import run_generation

    out = tmp_path / "gen"
    summary = run_generation(GenerateConfig(generator="dgt", checkpoint=str(bce_run / "final"),
                                            clean_dir=str(data / "good"), masks="auto", reference_dir=str(data),
                                            num_samples=2, min_change=0.0, output_dir=str(out)))
    for name in ("data.yaml", "annotations.json", "contact_sheet.png"):
        assert (out / name).is_file(), name
    coco = json.loads((out / "annotations.json").read_text())
    assert len(coco["images"]) == 2 and summary


# ---- config, launcher, real data ----

def test_small_config_and_launcher_error(tmp_path, capsys):
    import importlib.util

    cfg = load_config(DGTConfig, **SMALL)
    assert cfg.resolution == 64 and cfg.batch_size == 8 and cfg.data_dir.endswith("shared/data/aitex")
    spec = importlib.util.spec_from_file_location("train_dgt", REPO / "train" / "train_dgt.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    rc = launcher.main(launcher.parse_args(["--config", str(SMALL_YAML), "--data_dir", str(tmp_path / "none"),
                                            "--output_dir", str(tmp_path / "o")]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(tmp_path / "none") in err[0]
    rc = launcher.main(launcher.parse_args(["--config", str(SMALL_YAML), "--set", "input_fill=blur"]))
    assert rc == 2 and "input_fill" in capsys.readouterr().err


def test_short_run_on_aitex(aitex_root, tmp_path):
    out = tmp_path / "aitex"
    cfg = tiny_cfg(aitex_root, out, max_steps=20, sample_every=20, checkpointing_steps=100, log_every=10)
    final = train(cfg)
    grid = out / "samples" / "samples-000020.png"
    assert grid.is_file() and (final / "weights.safetensors").is_file()
    with Image.open(grid) as im:
        assert im.size == (4 * 98 + 2, 4 * 98 + 2) and np.asarray(im).std() > 5
    classes = yaml.safe_load((final / "config.yaml").read_text())["defect_classes"]
    assert "fuzzyball" in classes and classes == sorted(classes)
