"""bench/speed/bench_train_step.py at tiny size: both steps train what they should and the record is whole."""

import importlib.util
import json

import pytest
import torch


def _module():
    return importlib.import_module("bench.speed.bench_train_step")


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
    """bench/speed/bench_gpu.py's numbers are consistent with each other (run on CPU, tiny model)."""
    from bench.speed import bench_gpu as mod

    args = mod.parse_args(["--arch", "tiny", "--model-dir", str(tiny_model_dir), "--resolution", "32", "--batch", "2",
                           "--train-steps", "2", "--gen-slots", "1", "--steps", "2", "--candidates", "2",
                           "--peak-tflops", "0.5", "--recipe-steps", "100", "--out", str(tmp_path / "g"),
                           "--channels-last", "--features", "cached_reference_latents", "no_fused_text_encoding", "channels_last",
                           "--rounds", "1", "--warmup", "1"])
    r = mod.main(args)
    t, g = r["train"], r["generate"]
    assert len(t["step_seconds"]) == 2 and t["step_s"] > 0 and t["flops_per_step"] > 0
    assert t["examples_per_s"] == 2 / t["step_s"] and t["unet_samples_per_s"] == 4 / t["step_s"]
    assert abs(t["projected_recipe_minutes"] - 100 * t["step_s"] / 60) < 1e-9
    assert abs(r["fraction_of_bf16_peak"] - t["achieved_tflops"] / 0.5) < 1e-12 and t["peak_memory_gib"] > 0
    assert g["images_per_s"] == 1 / g["slot_s"] and g["candidates"] == 2
    assert json.loads((tmp_path / "g.json").read_text())["device"] == "cpu"
    f = json.loads((tmp_path / "g_features.json").read_text())
    assert f["features"] == ["defaults", "cached_reference_latents", "no_fused_text_encoding", "channels_last"]
    assert all(len(f["seconds"][k]) == 1 and f["median_s"][k] > 0 for k in f["features"])
    assert f["ratio_to_defaults"]["defaults"] == 1.0 and "| cached_reference_latents |" in (
        tmp_path / "g_features.md").read_text()
    gf = json.loads((tmp_path / "g_gen_features.json").read_text())
    assert gf["features"] == ["defaults", "channels_last"]  # the generation options among those named
    assert all(len(gf["seconds"][k]) == 1 and gf["first_slot_s"][k] > 0 for k in gf["features"])
    assert "| channels_last |" in (tmp_path / "g_gen_features.md").read_text()


def test_bench_gpu_splits_features_into_training_and_generation():
    from bench.speed import bench_gpu

    assert bench_gpu.split_features(None) == (None, None)
    train, gen = bench_gpu.split_features([])
    assert "cached_reference_latents" in train and gen == ["channels_last", "compile_unet", "bf16"]
    assert bench_gpu.split_features(["bf16", "channels_last"]) == (["channels_last"], ["bf16", "channels_last"])
    assert bench_gpu.split_features(["cached_reference_latents"]) == (["cached_reference_latents"], None)
    with pytest.raises(SystemExit, match="warp_speed"):
        bench_gpu.split_features(["warp_speed"])


def test_generation_options_are_switched_off_again(tiny_model_dir, tmp_path):
    """bench_lfs.py's rows share one synthesizer: each option is undone after its row."""
    from bench.speed import bench_lfs
    from defectfill.config import GenerateConfig
    from defectfill.diffusion.synthesizer import DefectFillSynthesizer

    lora = bench_lfs.untrained_lora(tiny_model_dir, tmp_path / "lora", 32)
    synth = DefectFillSynthesizer(GenerateConfig(lora_dir=str(lora), clean_dir=str(tmp_path), candidates=1,
                                                 num_inference_steps=1, selection="l1", resolution=32))
    unet = synth.pipe.unet
    compiled: dict = {}
    seen = {}
    for feature in bench_lfs.GEN_FEATURES:
        with bench_lfs.generation_feature(synth, feature, compiled):
            seen[feature] = (unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last),
                             "forward" in vars(unet), unet.dtype)
        assert unet.conv_in.weight.is_contiguous() and "forward" not in vars(unet) and unet.dtype == torch.float32
    assert seen["defaults"] == (False, False, torch.float32)
    assert seen["channels_last"][0] and seen["compile_unet"][1] and seen["bf16"][2] == torch.bfloat16


def test_features_table_steps_train_and_the_cache_hits(tiny_model_dir):
    """Each feature row runs a real training step; the cache row hits after its first step."""
    mod = _module()
    step = mod.DefectFillStep(str(tiny_model_dir), 32)
    batch = mod.batch_for(32, 2)
    batch.crop_keys = [("a", 0), ("a", 1)]
    for feature in mod.FEATURES:
        if feature == "compile_unet":
            continue  # tests/test_speed_features.py (slow)
        before = step.s.placeholder.vector.detach().clone()
        assert step(batch, None if feature in ("defaults", "channels_last") else feature) > 0
        assert not torch.equal(step.s.placeholder.vector, before), feature
    step(batch, "cached_reference_latents")
    assert step.latent_cache.misses == 2 and step.latent_cache.hits == 2


def test_tensor_memory_peak_counts_storages_by_hand():
    """Weights count from the start; new storages count until freed; views and in-place ops add nothing."""
    mod = _module()
    lin = torch.nn.Linear(256, 256)  # 256*256*4 + 256*4 bytes
    resident = (256 * 256 + 256) * 4
    mib = 2**20
    with mod.TensorMemoryPeak(lin) as m:
        assert m.resident == m.current == resident
        x = torch.ones(mib // 4)  # 1 MiB
        y = x * 2  # 1 MiB
        del x  # freed: 1 MiB live
        z = torch.ones(3 * mib // 4)  # 3 MiB: 4 MiB live, the peak
        view = z[:10]
        z.mul_(2)
        assert m.current == resident + 4 * mib
        del y, z, view
        assert m.current == resident
        w = torch.ones(mib // 4)  # 1 MiB, below the peak
    assert m.peak == resident + 4 * mib and m.current == resident + mib and w.numel() == mib // 4


def test_recipe_projection_by_hand():
    mod = _module()
    # 6e12 FLOP per example x 4 x 2000 = 4.8e16 FLOP; at 30 % of 1000 TFLOPS = 3e14 FLOP/s: 160 s
    got = mod.recipe_projection(6e12, 1000.0, fractions=(0.3,))
    assert abs(got["30%"] - 160 / 60) < 1e-9


def test_memory_table_at_tiny_size(tiny_model_dir, tmp_path):
    """Each row in a fresh process; gradient checkpointing must lower the step's tensor memory."""
    mod = _module()
    args = mod.parse_args(["--arch", "tiny", "--model-dir", str(tiny_model_dir), "--memory", "--memory-resolution", "64",
                           "--memory-rows", "2:0", "2:1", "--out", str(tmp_path / "m")])
    rows = mod.main(args)["rows"]
    assert [(r["batch"], r["gradient_checkpointing"]) for r in rows] == [(2, False), (2, True)]
    assert all("error" not in r for r in rows), rows
    plain, ckpt = (r["tensor_peak_gib"] for r in rows)
    assert plain["resident"] == ckpt["resident"] > 0
    assert plain["step"] > ckpt["step"] > 0
    assert "| 64 | 2 | True |" in (tmp_path / "m.md").read_text()
