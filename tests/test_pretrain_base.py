"""Pretraining a fabric inpainting base: data, masks, the card's metrics, a tiny run end to end
(losses fall, resume is bit-exact, the pipeline reloads with diffusers and inpaints, DefectFill
fine-tunes on it), and the shipped base with its model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from defectfill.diffusion.base import data as bdata
from defectfill.diffusion.base.card import in_mask_rmse, mean_fill, psnr, telea_fill
from defectfill.diffusion.base.train import PretrainBaseConfig, masked_mse, pretrain_base
from defectfill.errors import ConfigError

TINY = dict(resolution=32, crop_size=32, vae_channels=[16, 32], unet_channels=[32, 64], text_hidden=32,
            text_layers=1, attention_head_dim=4, vae_batch_size=4, batch_size=4, lr_warmup_steps=2,
            checkpointing_steps=4, log_every=1, eval_fraction=0.0, num_threads=1)


# ---- pure pieces ----

def test_in_mask_rmse_and_psnr_by_hand():
    real = np.zeros((1, 2, 2), np.uint8)
    filled = np.array([[[3, 100], [4, 0]]], np.uint8)
    mask = np.array([[[True, False], [True, False]]])
    assert in_mask_rmse(filled, real, mask) == pytest.approx(np.sqrt((9 + 16) / 2))
    assert psnr(np.full((4, 4), 10, np.uint8), np.full((4, 4), 12, np.uint8)) == pytest.approx(
        10 * np.log10(255**2 / 4))


def test_mean_and_telea_fill_touch_only_the_mask():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[10:14, 5:20] = True
    for filled in (mean_fill(gray, mask), telea_fill(gray, mask)):
        assert np.array_equal(filled[~mask], gray[~mask])
    assert (mean_fill(gray, mask)[mask] == round(float(gray[~mask].mean()))).all()


def test_masked_mse_by_hand():
    pred, target = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[0.0, 0.0]]]])
    weight = torch.tensor([[[[3.0, 1.0]]]])
    assert float(masked_mse(pred, target, weight)) == pytest.approx((3 * 1 + 1 * 4) / 4)


def test_crops_stay_on_fabric_and_masks_are_in_range():
    gray = np.random.default_rng(0).integers(60, 200, (64, 256), dtype=np.uint8)
    gray[:, 128:] = 255  # off-fabric white half
    from defectfill.data.fabric import fabric_mask

    im = bdata.FabricImage("x", gray, fabric_mask(gray), np.zeros(gray.shape, bool))
    rng = np.random.default_rng(1)
    for _ in range(20):
        crop, excl = bdata.sample_crop([im], 32, rng)
        assert (crop == 255).mean() <= 0.05 and excl.mean() <= 0.05
    shapes = [np.ones((3, 40), bool)]
    for kind_weights in ([1, 0, 0], [0, 1, 0], [0, 0, 1]):
        for _ in range(10):
            m, kind = bdata.inpaint_mask(32, rng, shapes, crop=64, kinds=kind_weights)
            assert m.shape == (32, 32) and m.any() and kind == bdata.MASK_KINDS[int(np.argmax(kind_weights))]
    # a real shape 40 source px long seen through a 64-px window at 32 px: 20 px long
    m, _ = bdata.inpaint_mask(32, rng, shapes, crop=64, kinds=[0, 0, 1])
    assert np.ptp(np.nonzero(m)[1]) + 1 >= 20


def test_config_range_checks():
    for bad in ({"resolution": 60}, {"crop_size": 0}, {"eval_fraction": 1.0}, {"prediction_type": "sample"},
                {"mask_kinds": [1, 0]}):
        with pytest.raises(ConfigError):
            PretrainBaseConfig(**bad)


# ---- a tiny run end to end ----

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from defectfill.data import make_woven_dataset

    return make_woven_dataset(tmp_path_factory.mktemp("pretrain-data") / "data", n_defect=3, n_good=3, height=64,
                              width=256, seed=0)


def _losses(run: Path, phase: str) -> list[float]:
    rows = [json.loads(x) for x in (run / "training" / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["phase"] == phase]


@pytest.fixture(scope="module")
def tiny_base(tiny_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "base"
    cfg = PretrainBaseConfig(data_dir=str(tiny_data), output_dir=str(out), vae_steps=30, unet_steps=30,
                             vae_learning_rate=2e-3, learning_rate=1e-3, **TINY)
    assert pretrain_base(cfg) == out
    return out


def test_losses_fall(tiny_base):
    for phase in ("vae", "unet"):
        losses = _losses(tiny_base, phase)
        assert len(losses) == 30
        assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), (phase, losses)


def test_saved_base_reloads_with_diffusers_and_inpaints(tiny_base):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_base, safety_checker=None,
                                                          requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 9 and pipe.vae_scale_factor == 2
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)  # measured on the data, not SD's
    gray = np.full((32, 32), 128, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    out = pipe(prompt="a photo of fabric", image=Image.fromarray(gray).convert("RGB"),
               mask_image=Image.fromarray(mask), height=32, width=32, num_inference_steps=4, guidance_scale=1.0,
               output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    assert out.shape == (32, 32, 3) and np.isfinite(out).all()


def test_resume_is_bit_exact(tiny_data, tmp_path):
    from safetensors.torch import load_file

    cfg = dict(data_dir=str(tiny_data), vae_steps=6, unet_steps=6, **TINY)
    a = tmp_path / "a"
    pretrain_base(PretrainBaseConfig(output_dir=str(a), **cfg))
    b = tmp_path / "b"
    pretrain_base(PretrainBaseConfig(output_dir=str(b), **cfg))
    # cut b back to its step-8 checkpoint (mid UNet phase) and rerun: it must end where a ended
    shutil.rmtree(b / "training" / "checkpoint-12")
    for part in ("unet", "vae", "text_encoder", "scheduler", "tokenizer"):
        shutil.rmtree(b / part)
    (b / "model_index.json").unlink()
    pretrain_base(PretrainBaseConfig(output_dir=str(b), **cfg))
    for part in ("unet", "vae"):
        wa, wb = (load_file(str(next((x / part).glob("*.safetensors")))) for x in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), part
    assert [json.loads(x)["step"] for x in (b / "training" / "metrics.jsonl").read_text().splitlines()] == \
        list(range(1, 13))


def test_a_finished_base_is_not_trained_over(tiny_base, tiny_data):
    with pytest.raises(ConfigError, match="already holds a finished base"):
        pretrain_base(PretrainBaseConfig(data_dir=str(tiny_data), output_dir=str(tiny_base), **TINY))


def test_defectfill_fine_tunes_on_the_base(tiny_base, tiny_data, tmp_path):
    from defectfill.cli import main

    out = tmp_path / "df"
    code = main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs/defectfill/tiny.yaml"),
                 "--set", f"model={tiny_base}", "--set", f"data_dir={tiny_data}", "--set", f"output_dir={out}",
                 "--set", "max_train_steps=2", "--set", "resolution=32", "--set", "crop_size=32",
                 "--set", "checkpointing_steps=100"])
    assert code == 0 and (out / "lora" / "defectfill_lora.json").is_file()


def _weights(folder: Path, part: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next((folder / part).glob("*.safetensors"))))


def test_init_from_starts_at_the_given_base(tiny_base, tiny_data, tmp_path):
    # no steps: the written base is the init base, weight for weight (EMA included), scaling factor kept
    out = tmp_path / "copy"
    pretrain_base(PretrainBaseConfig(data_dir=str(tiny_data), output_dir=str(out), init_from=str(tiny_base),
                                     vae_steps=0, unet_steps=0, **TINY))
    for part in ("unet", "vae", "text_encoder"):
        a, b = _weights(tiny_base, part), _weights(out, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    sf = [json.loads((f / "vae" / "config.json").read_text())["scaling_factor"] for f in (tiny_base, out)]
    assert sf[0] == sf[1]
    # a few UNet steps at another crop scale move the UNet away from the init, and not the frozen VAE
    tuned = tmp_path / "tuned"
    pretrain_base(PretrainBaseConfig(data_dir=str(tiny_data), output_dir=str(tuned), init_from=str(tiny_base),
                                     vae_steps=0, unet_steps=3, **{**TINY, "crop_size": 16}))
    a, b = _weights(tiny_base, "unet"), _weights(tuned, "unet")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    a, b = _weights(tiny_base, "vae"), _weights(tuned, "vae")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_checks_the_folder_and_the_architecture(tiny_base, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="init_from: .*missing model_index.json"):
        pretrain_base(PretrainBaseConfig(data_dir=str(tiny_data), output_dir=str(tmp_path / "a"),
                                         init_from=str(tmp_path), **TINY))
    with pytest.raises(ConfigError, match=r"init_from: .*unet does not match"):
        pretrain_base(PretrainBaseConfig(data_dir=str(tiny_data), output_dir=str(tmp_path / "b"),
                                         init_from=str(tiny_base), **{**TINY, "unet_channels": [32, 96]}))


def test_cli_card_names_its_command_and_measures_the_init_base(tiny_base, tiny_data, tmp_path):
    from defectfill.cli import main

    out = tmp_path / "tuned"
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + \
        [f"init_from={tiny_base}", "vae_steps=0", "unet_steps=1", "card_crops=4", "card_steps=2"]
    argv = ["pretrain-base", "--data-dir", str(tiny_data), "--output-dir", str(out)] + [x for s in sets for x in ("--set", s)]
    assert main(argv) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["command"].startswith(f"defectfill pretrain-base --data-dir {tiny_data} --output-dir {out}")
    assert f"--set init_from={tiny_base}" in card["command"]
    assert set(card["inpainting"]) == {"mean fill", "OpenCV Telea", "base (1 sample)", "base (mean of 4)",
                                       f"{tiny_base.name} (1 sample)"}
    assert f"starting from the base in {tiny_base}" in card["what"]


# ---- the shipped base ----

def test_the_shipped_base_is_present_small_and_beats_telea():
    from diffusers import StableDiffusionInpaintPipeline

    from defectfill.diffusion.models.pipeline import FABRIC_BASE, resolve_model

    folder = Path(resolve_model(FABRIC_BASE))
    assert (folder / "model_index.json").is_file()
    size = sum(p.stat().st_size for p in folder.glob("*/*.safetensors"))
    assert size <= 25 * 2**20
    card = json.loads((folder / "model_card.json").read_text())
    assert (folder / "model_card.md").is_file() and (folder / "model_card.png").is_file()
    fills = card["inpainting"]
    assert fills["base (1 sample)"]["in_mask_rmse"] < fills["OpenCV Telea"]["in_mask_rmse"]
    assert card["eval_images"].startswith("held-out")
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 9
