"""bench/bench_train_step.py at tiny size: both steps train what they should and the record is whole."""

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH / "bench_train_step.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_both_steps_update_only_their_trainable_tensors(tiny_model_dir):
    mod = _module()
    batch = mod.batch_for(32, 1)
    df, plain = mod.DefectFillStep(str(tiny_model_dir), 32), mod.PlainInpaintLoRAStep(str(tiny_model_dir))
    for step, model in ((df, df.s.unet), (plain, plain.unet)):
        lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        assert lora and frozen
        loss = step(batch)
        assert loss > 0
        named = dict(model.named_parameters())
        assert any(not torch.equal(named[n], v) for n, v in lora.items())  # LoRA moved
        assert all(torch.equal(named[n], v) for n, v in frozen.items())  # the base did not
    before = df.s.placeholder.vector.detach().clone()
    df(mod.batch_for(32, 1, seed=1))
    assert not torch.equal(df.s.placeholder.vector, before)  # DefectFill also trains [V*]


def test_record_has_times_flops_and_ratio(tiny_model_dir, tmp_path):
    mod = _module()
    args = mod.parse_args(["--arch", "tiny", "--model-dir", str(tiny_model_dir), "--resolution", "32",
                           "--rounds", "2", "--warmup", "0", "--out", str(tmp_path / "ts")])
    result = mod.main(args)
    saved = json.loads((tmp_path / "ts.json").read_text())
    assert saved["ratio"] == result["ratio"] > 0 and len(saved["seconds"]["defectfill"]) == 2
    assert all(v > 0 for v in saved["flops"].values()) and saved["unet_samples_per_step"] == 2
    assert 0.5 < saved["flop_ratio"] < 2  # same UNet samples on the same network
    assert "Time ratio" in (tmp_path / "ts.md").read_text()


def test_bench_gpu_at_tiny_size_on_cpu(tiny_model_dir, tmp_path):
    """bench/bench_gpu.py's numbers are consistent with each other (run on CPU, tiny model)."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    args = mod.parse_args(["--arch", "tiny", "--model-dir", str(tiny_model_dir), "--resolution", "32", "--batch", "2",
                           "--train-steps", "2", "--gen-slots", "1", "--steps", "2", "--candidates", "2",
                           "--peak-tflops", "0.5", "--recipe-steps", "100", "--out", str(tmp_path / "g")])
    r = mod.main(args)
    t, g = r["train"], r["generate"]
    assert len(t["step_seconds"]) == 2 and t["step_s"] > 0 and t["flops_per_step"] > 0
    assert t["examples_per_s"] == 2 / t["step_s"] and t["unet_samples_per_s"] == 4 / t["step_s"]
    assert abs(t["projected_recipe_minutes"] - 100 * t["step_s"] / 60) < 1e-9
    assert abs(r["fraction_of_bf16_peak"] - t["achieved_tflops"] / 0.5) < 1e-12 and t["peak_memory_gib"] > 0
    assert g["images_per_s"] == 1 / g["slot_s"] and g["candidates"] == 2
    assert json.loads((tmp_path / "g.json").read_text())["device"] == "cpu"
