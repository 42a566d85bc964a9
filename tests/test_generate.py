"""DefectFill generation on the tiny model: windows, background fidelity, Low-Fidelity Selection,
resume, sharding across processes, quality gate and the exported dataset."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from scipy import ndimage

from defectfill.config import GenerateConfig, load_config
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.diffusion.synthesizer import DefectFillSynthesizer, model_mask
from defectfill.errors import DataError
from defectfill.generation.compositing import blend_weights, composite, mask_window, visible_change
from defectfill.generation.run import run_generation

REPO = Path(__file__).resolve().parents[1]


# ---- pure helpers ----

def test_composite_keeps_background_bit_for_bit():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    generated = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:14, 20:30] = True
    out = composite(clean, generated, mask, dilation=3)
    distance = ndimage.distance_transform_edt(~mask)  # independent: Euclidean distance to the mask
    assert np.array_equal(out[distance > 3], clean[distance > 3])
    assert np.array_equal(out[mask], generated[mask])
    band = (distance > 0) & (distance <= 3)
    lo, hi = np.minimum(clean, generated), np.maximum(clean, generated)
    assert np.all((out[band] >= lo[band]) & (out[band] <= hi[band]))
    # RGB and dilation 0: exactly the mask is replaced
    rgb_clean, rgb_gen = np.stack([clean] * 3, -1), np.stack([generated] * 3, -1)
    out0 = composite(rgb_clean, rgb_gen, mask, dilation=0)
    assert np.array_equal(out0[~mask], rgb_clean[~mask]) and np.array_equal(out0[mask], rgb_gen[mask])
    assert blend_weights(mask, 3)[12, 25] == 1.0 and blend_weights(mask, 3)[12, 34] == 0.0


@pytest.mark.parametrize("box, crop, shape, expected", [
    ((100, 120, 500, 510), 128, (256, 4096), (46, 441, 128, 128)),   # centred on the defect
    ((0, 3, 0, 3), 128, (256, 4096), (0, 0, 128, 128)),             # clamped at the corner
    ((100, 110, 4080, 4090), 128, (256, 4096), (41, 3968, 128, 128)),  # clamped at the right edge
    ((10, 250, 4000, 4090), 128, (256, 4096), (10, 3855, 241, 241)),  # the window grows to the defect
    ((0, 255, 1000, 1001), 128, (256, 4096), (0, 873, 256, 256)),   # defect taller than the crop
    ((5, 6, 5, 6), 512, (256, 300), (0, 0, 256, 300)),              # crop larger than the image
])
def test_mask_window(box, crop, shape, expected):
    y0, y1, x0, x1 = box
    mask = np.zeros(shape, bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    assert mask_window(mask, crop) == expected


def test_model_mask_survives_latent_downsampling():
    mask = np.zeros((256, 256), bool)
    mask[100, 40:200] = True  # a one-pixel-high thread
    m = model_mask(mask, 64, latent_factor=8)  # 4x downscale, then the pipeline's 8x nearest
    latent = torch.nn.functional.interpolate(torch.from_numpy(m)[None, None].float(), size=(8, 8))
    assert latent.sum() > 0
    assert m[25, 10:50].all()  # the thread itself is inside


# ---- the tiny model, fine-tuned briefly ----

@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, reference_root, tmp_path_factory):
    from defectfill.diffusion.trainer import train

    out = tmp_path_factory.mktemp("gen-train") / "run"
    cfg = load_config(DefectFillTrainConfig, REPO / "configs" / "defectfill" / "tiny.yaml", model=str(tiny_model_dir),
                      data_dir=str(reference_root), output_dir=str(out), max_train_steps=2, checkpointing_steps=100)
    return train(cfg)


@pytest.fixture(scope="module")
def clean_dir(reference_root, tmp_path_factory):
    """Four grayscale defect-free images (AITEX good tiles when present, else procedural)."""
    out = tmp_path_factory.mktemp("clean")
    tiles = reference_root / "tiles" / "good"
    if tiles.is_dir():
        for p in sorted(tiles.glob("*.png"))[:4]:
            shutil.copy(p, out / p.name)
    else:
        for p in sorted((reference_root / "good").glob("*.png"))[:4]:
            Image.open(p).crop((0, 0, 256, 128)).save(out / p.name)
    return out


def gen_cfg(lora_dir, clean_dir, out, **kw):
    base = dict(lora_dir=str(lora_dir), clean_dir=str(clean_dir), output_dir=str(out), num_samples=4,
                candidates=3, num_inference_steps=2, seed=3, min_change=0.0)
    base.update(kw)
    return GenerateConfig(**base)


@pytest.fixture(scope="module")
def generated(lora_dir, clean_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "data"
    summary = run_generation(gen_cfg(lora_dir, clean_dir, out))
    return out, summary


def read(path):
    return np.asarray(Image.open(path))


def test_generated_dataset_is_complete_and_labelled(generated, clean_dir):
    out, summary = generated
    assert summary["samples"] == 4 and summary["rejected"] == 0
    names = sorted(p.stem for p in (out / "images").glob("*.png"))
    assert names == ["000000", "000001", "000002", "000003"]
    for name in names:
        side = json.loads((out / "sidecars" / f"{name}.json").read_text())
        image = Image.open(out / "images" / f"{name}.png")
        assert image.mode == "L", "grayscale in, grayscale out"
        clean = read(side["source_image"])
        exported = read(out / "masks" / f"{name}.png") > 0
        mask = mask_util.decode(side["requested_mask_rle"]).astype(bool)  # the mask the generator was given
        result = np.asarray(image)
        far = ndimage.distance_transform_edt(~mask) > side["generator_config"]["dilation"]
        assert np.array_equal(result[far], clean[far]), "background outside the dilated mask is untouched"
        label, _, _ = visible_change(clean, result, mask)
        np.testing.assert_array_equal(exported, label)  # the label is the requested pixels that changed
        assert side["visible_fraction"] == pytest.approx(label.sum() / mask.sum())
        sel = side["selection"]
        assert len(sel["scores"]) == 3 and sel["chosen"] == int(np.argmax(sel["scores"]))
        assert sel["measure"] == "lpips-lite0" and sel["lpips"].startswith("lpips-lite0")
        assert "RANDOM" not in sel["lpips"]  # the pretrained backbone is the default, and says so
        assert side["mask_source"].startswith("auto:") and side["lora_hash"]
        lines = (out / "labels" / f"{name}.txt").read_text().splitlines()
        assert len(lines) == len(side["boxes"]) >= 1
    assert (out / "contact_sheet.png").is_file() and (out / "run_info.json").is_file()

    from pycocotools.coco import COCO

    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 4 and len(coco.getAnnIds()) >= 4


def test_ultralytics_accepts_generated_dataset_offline(generated, tmp_path):
    out, _ = generated
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLO_")}
    env.update(YOLO_CONFIG_DIR=str(tmp_path / "yolo"), HF_HUB_OFFLINE="1")
    code = ("import sys, json; from defectfill.detect.offline import check_dataset_offline; "
            "d = check_dataset_offline(sys.argv[1]); print(json.dumps({'nc': d['nc']}))")
    run = subprocess.run([sys.executable, "-c", code, str(out / "data.yaml")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    names = json.loads((out / "annotations.json").read_text())["categories"]
    assert json.loads(run.stdout.strip().splitlines()[-1])["nc"] == len(names)


class CountingSynth(DefectFillSynthesizer):
    """The real synthesizer, counting pipeline calls and optionally failing at one slot."""

    calls: list = []
    fail_at_call: int | None = None

    def candidates(self, window, window_mask, seeds, prompt=None):
        CountingSynth.calls.append(len(seeds))
        if CountingSynth.fail_at_call is not None and len(CountingSynth.calls) == CountingSynth.fail_at_call:
            raise KeyboardInterrupt("simulated interruption")
        return super().candidates(window, window_mask, seeds, prompt)


def test_candidates_are_batched_in_one_pipeline_call(lora_dir, clean_dir, tmp_path, monkeypatch):
    CountingSynth.calls, CountingSynth.fail_at_call = [], None
    pipe_calls = []
    real = DefectFillSynthesizer.__init__

    def spy_init(self, *a, **k):
        real(self, *a, **k)
        orig = self.pipe.__call__
        self.pipe = type("Spy", (), {"__call__": lambda s, *pa, **pk: (pipe_calls.append(pk), orig(*pa, **pk))[1],
                                     "vae_scale_factor": self.pipe.vae_scale_factor})()

    monkeypatch.setattr(DefectFillSynthesizer, "__init__", spy_init)
    run_generation(gen_cfg(lora_dir, clean_dir, tmp_path / "d", num_samples=2, candidates=5),
                   synthesizer_factory=CountingSynth)
    assert len(pipe_calls) == 2 and all(c["num_images_per_prompt"] == 5 for c in pipe_calls)
    assert all(len(c["generator"]) == 5 for c in pipe_calls)


def test_interrupted_generation_resumes_to_the_same_dataset(generated, lora_dir, clean_dir, tmp_path):
    ref, _ = generated
    out = tmp_path / "data"
    CountingSynth.calls, CountingSynth.fail_at_call = [], 3
    with pytest.raises(KeyboardInterrupt):
        run_generation(gen_cfg(lora_dir, clean_dir, out), synthesizer_factory=CountingSynth)
    assert sorted(p.stem for p in (out / "sidecars").glob("*.json")) == ["000000", "000001"]
    CountingSynth.calls, CountingSynth.fail_at_call = [], None
    summary = run_generation(gen_cfg(lora_dir, clean_dir, out), synthesizer_factory=CountingSynth)
    assert len(CountingSynth.calls) == 2, "only the missing slots are generated"
    assert summary["samples"] == 4
    for sub in ("images", "masks", "labels"):
        for f in sorted((ref / sub).iterdir()):
            assert f.read_bytes() == (out / sub / f.name).read_bytes(), f"{sub}/{f.name} differs"
    a = json.loads((ref / "annotations.json").read_text())
    b = json.loads((out / "annotations.json").read_text())
    assert a == b


def test_quality_gate_rejects_and_keeps_for_audit(lora_dir, clean_dir, tmp_path):
    out = tmp_path / "gate"
    summary = run_generation(gen_cfg(lora_dir, clean_dir, out, num_samples=2, min_change=256.0))
    assert summary["samples"] == 0 and summary["rejected"] == 2
    assert not list((out / "labels").glob("*.txt"))
    rejected = sorted((out / "rejected" / "sidecars").glob("*.json"))
    assert len(rejected) == 2 and "min_change" in json.loads(rejected[0].read_text())["reason"]


def test_masks_folder_and_bad_mask_fail_before_the_model_loads(lora_dir, clean_dir, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    names = sorted(p.name for p in clean_dir.iterdir())
    for name in names:
        h, w = read(clean_dir / name).shape
        m = np.zeros((h, w), np.uint8)
        m[20:30, 40:44] = 255
        Image.fromarray(m).save(masks / name)
    out = tmp_path / "folder"
    summary = run_generation(gen_cfg(lora_dir, clean_dir, out, masks=str(masks), defect_type="stain",
                                     num_samples=len(names), label_from_change=False))
    from defectfill.data.fabric import fabric_mask, off_fabric_fraction

    off = [off_fabric_fraction(read(masks / n) > 0, fabric_mask(read(clean_dir / n))) > 0.05 for n in names]
    assert summary["samples"] == off.count(False) and summary["inspection"]["rejected_by_reason"].get(
        "off_fabric", 0) == off.count(True)  # a user's mask on off-fabric white labels nothing: rejected
    assert (out / "data.yaml").read_text().count("stain") == 1
    first = next(i for i, o in enumerate(off) if not o)
    assert np.array_equal(read(out / "masks" / f"{first:06d}.png") > 0, read(masks / names[first]) > 0)

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / names[1])

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    with pytest.raises(DataError, match=names[1]):
        run_generation(gen_cfg(lora_dir, clean_dir, tmp_path / "bad", masks=str(masks), num_samples=len(names)),
                       synthesizer_factory=must_not_load)


def test_two_processes_share_slots_and_match_one_process(generated, lora_dir, clean_dir, tmp_path):
    """`accelerate launch -m defectfill generate` with 2 CPU processes: disjoint slots, one dataset,
    identical images to the single-process run (per-slot seeds)."""
    ref, _ = generated
    out = tmp_path / "ddp"
    # same thread count as this process, so float reductions (and pixels) match the reference run
    env = dict(os.environ, ACCELERATE_USE_CPU="true", HF_HUB_OFFLINE="1")
    threads = str(torch.get_num_threads())
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29541",
           "--num_cpu_threads_per_process", threads,
           "-m", "defectfill", "generate", "--lora", str(lora_dir), "--clean-dir", str(clean_dir), "--masks", "auto",
           "--num-samples", "4", "--candidates", "3", "--steps", "2", "--seed", "3", "--output-dir", str(out),
           "--set", "min_change=0"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2 and info["summary"]["samples"] == 4
    for f in sorted((ref / "images").iterdir()):
        assert f.read_bytes() == (out / "images" / f.name).read_bytes()


def test_cli_generate_auto_masks_on_ten_aitex_tiles(aitex_root, lora_dir, tmp_path, capsys):
    from defectfill.cli import main

    clean = tmp_path / "good-tiles"
    clean.mkdir()
    for p in sorted((aitex_root / "tiles" / "good").glob("*.png"))[:10]:
        shutil.copy(p, clean / p.name)
    out = tmp_path / "aitex-gen"
    code = main(["generate", "--lora", str(lora_dir), "--clean-dir", str(clean), "--masks", "auto", "--num-samples", "10",
                 "--candidates", "2", "--steps", "2", "--output-dir", str(out), "--data-dir", str(aitex_root)])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "run_info.json").read_text())["summary"]
    assert info["samples"] + info["rejected"] == 10
    assert len(list((out / "images").glob("*.png"))) == info["samples"]
    assert (out / "contact_sheet.png").is_file() and (out / "annotations.json").is_file()


def test_demo_on_procedural_data_ends_with_a_labelled_dataset(woven_root, tmp_path):
    """The README's demo path on a machine without AITEX: procedural fabric → LoRA → dataset."""
    from defectfill.demo import run_demo

    summary = run_demo(tmp_path / "demo", data_dir=woven_root, steps=2, num_samples=2)
    dataset = Path(summary["dataset"])
    assert summary["samples"] + summary["rejected"] == 2
    assert (dataset / "data.yaml").is_file() and (dataset / "annotations.json").is_file()
    assert Path(summary["contact_sheet"]).is_file() and Path(summary["preview"]).is_file()
    assert json.loads((tmp_path / "demo" / "summary.json").read_text())["lora"] == summary["lora"]
    # `make demo` twice: the second run retrains over the first (the demo passes overwrite) and ends the same
    again = run_demo(tmp_path / "demo", data_dir=woven_root, steps=2, num_samples=2)
    assert again["first_loss"] == summary["first_loss"] and again["last_loss"] == summary["last_loss"]
    assert again["samples"] == summary["samples"]


# ---- speed options: they change the cost of generation, never its images ----

def speed_option_candidates(lora_dir, clean_dir, tmp_path, **options) -> tuple[DefectFillSynthesizer, np.ndarray]:
    synth = DefectFillSynthesizer(gen_cfg(lora_dir, clean_dir, tmp_path, candidates=2, **options))
    r = synth.resolution
    window = np.random.default_rng(0).integers(60, 200, (r, r, 3), dtype=np.uint8)
    window_mask = np.zeros((r, r), bool)
    window_mask[r // 4: r // 2, r // 3: r // 2] = True
    return synth, synth.candidates(window, window_mask, [11, 12])


def test_channels_last_generation_gives_the_default_candidates(lora_dir, clean_dir, tmp_path):
    _, eager = speed_option_candidates(lora_dir, clean_dir, tmp_path)
    synth, fast = speed_option_candidates(lora_dir, clean_dir, tmp_path, channels_last=True)
    assert synth.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert synth.pipe.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(fast, eager, atol=1e-4)


@pytest.mark.slow
def test_compiled_unet_generation_gives_the_eager_candidates(lora_dir, clean_dir, tmp_path):
    from torch._dynamo.utils import counters

    _, eager = speed_option_candidates(lora_dir, clean_dir, tmp_path)
    compiled_before = counters["stats"]["unique_graphs"]
    _, compiled = speed_option_candidates(lora_dir, clean_dir, tmp_path, compile_unet=True)
    assert counters["stats"]["unique_graphs"] > compiled_before, "the UNet was not compiled"
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
