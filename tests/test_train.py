"""End-to-end DefectFill fine-tuning on the tiny model: LoRA export, resume, multi-process, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from defectfill.config import load_config
from defectfill.diffusion.config import DefectFillTrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "defectfill" / "tiny.yaml"
SCRIPT = REPO / "train" / "train_defectfill.py"


def tiny_cfg(model, data, out, **kw):
    return load_config(DefectFillTrainConfig, TINY_YAML, model=str(model), data_dir=str(data), output_dir=str(out), **kw)


def script_args(model, data, out, *extra):
    return ["--config", str(TINY_YAML), "--model", str(model), "--data_dir", str(data), "--output_dir", str(out),
            *extra]


def run_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def lora_tensors(lora_dir: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(lora_dir / "pytorch_lora_weights.safetensors"))
    out.update(load_file(str(lora_dir / "learned_embeds.safetensors")))
    return out


def inpaint(pipe, prompt):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 20:44] = 255
    return pipe(prompt, image=image, mask_image=Image.fromarray(mask), height=64, width=64,
                num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images[0]


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, reference_root, tmp_path_factory):
    from defectfill.diffusion.trainer import train

    out = tmp_path_factory.mktemp("train") / "run"
    lora_dir = train(tiny_cfg(tiny_model_dir, reference_root, out))
    return out, lora_dir


def test_training_writes_lora_config_and_logs(trained_run):
    out, lora_dir = trained_run
    assert lora_dir == out / "lora"
    names = {p.name for p in lora_dir.iterdir()}
    assert names == {"pytorch_lora_weights.safetensors", "learned_embeds.safetensors", "defectfill_lora.json",
                     "run_info.json"}
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and info["global_step"] == 6
    assert info["versions"]["diffusers"] and info["versions"]["torch"]
    assert info["config"]["resolution"] == 64
    rows = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:  # total is the weighted sum of the logged components
        expected = 0.5 * r["loss_def"] + 0.2 * r["loss_obj"] + 0.05 * r["loss_attn"]
        assert r["loss"] == pytest.approx(expected, rel=1e-5)
    # checkpoints every 3 steps, none at the final step (the final LoRA is written instead)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt")), "safetensors only"


def test_lora_loads_into_fresh_pipeline_and_changes_output(trained_run, tiny_model_dir):
    from defectfill.diffusion.models.pipeline import load_inpaint_pipeline

    _, lora_dir = trained_run
    meta = json.loads((lora_dir / "defectfill_lora.json").read_text())
    prompt = meta["defect_prompt"]
    assert prompt == "A photo of <v*>"

    base = load_inpaint_pipeline(str(tiny_model_dir))
    base.tokenizer.add_tokens("<v*>")  # same token string, untrained (base model has no [V*])
    base.text_encoder.resize_token_embeddings(len(base.tokenizer))
    before = inpaint(base, "A photo of fabric")

    tuned = load_inpaint_pipeline(str(tiny_model_dir))
    tuned.load_textual_inversion(str(lora_dir / "learned_embeds.safetensors"), token="<v*>")
    tuned.load_lora_weights(str(lora_dir))  # the diffusers API users call
    assert tuned.tokenizer.convert_tokens_to_ids("<v*>") == len(tuned.tokenizer) - 1
    after = inpaint(tuned, "A photo of fabric")
    again = inpaint(load_inpaint_pipeline(str(tiny_model_dir), lora_dir=lora_dir), "A photo of fabric")
    assert np.abs(after - before).max() > 1e-3, "fine-tuned LoRA must change the inpainting"
    np.testing.assert_array_equal(after, again)


def test_resume_after_checkpoint_matches_uninterrupted_run(trained_run, tiny_model_dir, reference_root, tmp_path):
    """Disk state after `checkpoint-3` of the reference run, then resume: bit-identical weights."""
    from defectfill.diffusion.trainer import train

    ref_out, ref_lora = trained_run
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(ref_out / "checkpoint-3", out / "checkpoint-3")
    # the dead run had logged steps 1..6 (4..6 after checkpoint-3) and half of a 7th line
    (out / "logs").mkdir()
    ref_metrics = (ref_out / "logs" / "metrics.jsonl").read_text()
    (out / "logs" / "metrics.jsonl").write_text(ref_metrics + '{"step": 7, "loss": 0.1')
    lora = train(tiny_cfg(tiny_model_dir, reference_root, out), resume_from_checkpoint="latest")
    a, b = lora_tensors(ref_lora), lora_tensors(lora)
    assert a.keys() == b.keys()
    for k in a:  # tolerance 0: same ops, same order, same seeds on CPU
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    assert json.loads((out / "run_info.json").read_text())["resumed_from"].endswith("checkpoint-3")
    # each step logged once: 1..3 kept from before the checkpoint, 4..6 logged again by the resumed run
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows == [json.loads(line) for line in ref_metrics.splitlines()]  # same values as uninterrupted


def test_registry_fit_resumes_an_interrupted_fit(trained_run, tiny_model_dir, reference_root, tmp_path):
    """The benchmark refits in the same folder after an interruption: `fit` continues from the newest
    checkpoint (not a refusal, not a restart) and ends with the uninterrupted run's weights."""
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.diffusion.synthesizer import DefectFillSynthesizer

    ref_out, ref_lora = trained_run
    out = tmp_path / "fit"
    out.mkdir()
    shutil.copytree(ref_out / "checkpoint-3", out / "checkpoint-3")
    unfitted = DefectFillSynthesizer.from_init_args({"config": str(TINY_YAML), "model": str(tiny_model_dir)})
    lora = unfitted.fit(load_reference_dataset(reference_root), out, seed=0)
    assert json.loads((out / "run_info.json").read_text())["resumed_from"].endswith("checkpoint-3")
    a, b = lora_tensors(ref_lora), lora_tensors(lora)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_killed_run_resumes_to_the_same_weights(tiny_model_dir, reference_root, tmp_path):
    """A real SIGKILL after the first checkpoint, `--resume_from_checkpoint latest`, same end weights."""
    steps = ["--max_train_steps", "24", "--set", "checkpointing_steps=2"]
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(SCRIPT), *script_args(tiny_model_dir, reference_root, ref), *steps],
                   check=True, env=run_env(), capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *script_args(tiny_model_dir, reference_root, out), *steps],
                            env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(out.glob("checkpoint-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "lora").exists(), "the run was killed before finishing"
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert checkpoints and all((c / "trainer_state.json").is_file() for c in checkpoints)

    res = subprocess.run([sys.executable, str(SCRIPT), *script_args(tiny_model_dir, reference_root, out), *steps,
                          "--resume_from_checkpoint", "latest"], env=run_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stdout
    assert [r["step"] for r in metrics(out)] == list(range(1, 25)), "every step logged once after the resume"
    a, b = lora_tensors(ref / "lora"), lora_tensors(out / "lora")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_accelerate_launch_two_cpu_processes(tiny_model_dir, reference_root, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo), the multi-GPU stand-in."""
    out = tmp_path / "ddp"
    env = dict(run_env(), ACCELERATE_USE_CPU="true")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", "1", "--main_process_port", "29533",
           str(SCRIPT), *script_args(tiny_model_dir, reference_root, out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2 and info["global_step"] == 6
    assert lora_tensors(out / "lora")


# ---- bad input: one clear line naming the file, before any training ----

def _make_pair(root: Path, name="a", size=(64, 32), mask_size=None, mask_value=255):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], 128, np.uint8)).save(root / "images" / f"{name}.png")
    m = np.zeros((mask_size or size)[::-1], np.uint8)
    m[5:9, 5:9] = mask_value
    Image.fromarray(m).save(root / "masks" / f"{name}.png")


def _run_main(model, data, out, capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_defectfill
    finally:
        sys.path.pop(0)
    code = train_defectfill.main(train_defectfill.parse_args(script_args(model, data, out)))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("problem, expect", [
    ("size_mismatch", "a.png"),
    ("empty_mask", "a.png"),
    ("missing_mask", "b.png"),
    ("missing_data_dir", "nowhere"),
])
def test_bad_data_fails_before_training(problem, expect, tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "data"
    if problem == "size_mismatch":
        _make_pair(data, mask_size=(64, 30))
    elif problem == "empty_mask":
        _make_pair(data, mask_value=0)
    elif problem == "missing_mask":
        _make_pair(data)
        _make_pair(data, "b")
        (data / "masks" / "b.png").unlink()
    else:
        data = tmp_path / "nowhere"
    out = tmp_path / "out"
    code, err = _run_main(tiny_model_dir, data, out, capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0]
    assert not out.exists(), "nothing is written before the input is valid"


def test_missing_model_dir_fails_cleanly(woven_root, tmp_path, capsys):
    code, err = _run_main(tmp_path / "no-such-model", woven_root, tmp_path / "out", capsys)
    assert code == 2 and len(err) == 1 and "no-such-model" in err[0] and "does not exist" in err[0]


def test_unet_without_nine_channels_is_rejected(tiny_model_dir, woven_root, tmp_path, capsys):
    model = tmp_path / "txt2img"
    shutil.copytree(tiny_model_dir, model)
    cfg_path = model / "unet" / "config.json"
    config = json.loads(cfg_path.read_text())
    config["in_channels"] = 4
    cfg_path.write_text(json.dumps(config))
    code, err = _run_main(model, woven_root, tmp_path / "out", capsys)
    assert code == 2 and len(err) == 1
    assert str(cfg_path) in err[0] and "in_channels is 4" in err[0]


def test_gradient_checkpointing_and_accumulation_match_plain_training(tiny_model_dir, reference_root, tmp_path):
    """Checkpointing recomputes activations (incl. the [V*] capture): same weights as without it."""
    from defectfill.diffusion.trainer import train

    common = dict(max_train_steps=2, checkpointing_steps=100)
    plain = train(tiny_cfg(tiny_model_dir, reference_root, tmp_path / "plain", **common))
    ckpt = train(tiny_cfg(tiny_model_dir, reference_root, tmp_path / "ckpt", gradient_checkpointing=True, **common))
    a, b = lora_tensors(plain), lora_tensors(ckpt)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # accumulation: 2 micro-batches per step really run and average into each logged step
    acc = tmp_path / "acc"
    train(tiny_cfg(tiny_model_dir, reference_root, acc, gradient_accumulation_steps=2, **common))
    rows = [json.loads(line) for line in (acc / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not torch.equal(lora_tensors(acc / "lora")["<v*>"], a["<v*>"])


def test_bf16_mixed_precision_runs_and_exports_fp32_lora(tiny_model_dir, reference_root, tmp_path):
    from defectfill.diffusion.trainer import train

    lora = train(tiny_cfg(tiny_model_dir, reference_root, tmp_path / "bf16", mixed_precision="bf16",
                          max_train_steps=2, checkpointing_steps=100))
    tensors = lora_tensors(lora)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())


# ---- the run folder: no silent training over a run, one line for a write failure, resumable ----

def cli_train(model, data, out, capsys, *extra):
    """`defectfill train` in-process: (exit code, the `error:` lines, all of stderr)."""
    from defectfill.cli import main

    capsys.readouterr()
    code = main(["train", "--config", str(TINY_YAML), "--set", f"model={model}", "--set", f"data_dir={data}",
                 "--set", f"output_dir={out}", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, [line for line in err.splitlines() if line.startswith("error:")], err


@pytest.fixture
def no_weights(monkeypatch):
    """Loading the model's weights fails the test: the case must be refused before."""
    import defectfill.diffusion.models.pipeline as pipeline

    def loaded(*args, **kwargs):
        raise AssertionError("weights were loaded before the problem was reported")

    monkeypatch.setattr(pipeline, "load_training_components", loaded)


def test_finished_run_is_refused_then_replaced_with_overwrite(trained_run, tiny_model_dir, reference_root, tmp_path,
                                                              capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(trained_run[0], out)
    (out / "notes.txt").write_text("the user's own file\n")
    before = tree(out)
    with monkeypatch.context() as m:
        m.setattr("defectfill.diffusion.models.pipeline.load_training_components",
                  lambda *a, **k: pytest.fail("weights loaded before the refusal"))
        code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys)
    assert code == 2 and len(errors) == 1, err
    assert f"{out}: already holds a finished run" in errors[0] and "--overwrite" in errors[0]
    assert tree(out) == before, "the refused command changed the folder"

    # --overwrite through the launcher script: the old checkpoints, logs and LoRA go, nothing stale mixes in
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import train_defectfill
    finally:
        sys.path.pop(0)
    args = train_defectfill.parse_args(script_args(tiny_model_dir, reference_root, out, "--overwrite",
                                                   "--max_train_steps", "2", "--set", "checkpointing_steps=100"))
    assert train_defectfill.main(args) == 0
    assert not list(out.glob("checkpoint-*")) and not list(out.glob(".*tmp-*"))
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert (out / "DONE").read_text() == "2\n"
    assert json.loads((out / "run_info.json").read_text())["global_step"] == 2
    assert json.loads((out / "lora" / "run_info.json").read_text())["global_step"] == 2
    assert (out / "notes.txt").read_text() == "the user's own file\n", "only the run's own files are cleared"


def test_unfinished_run_without_resume_flag_is_refused(trained_run, tiny_model_dir, reference_root, tmp_path, capsys,
                                                       no_weights):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(trained_run[0] / "checkpoint-3", out / "checkpoint-3")
    before = tree(out)
    code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys)
    assert code == 2 and len(errors) == 1, err
    assert str(out) in errors[0] and "checkpoint-3" in errors[0]
    assert "--resume_from_checkpoint latest" in errors[0] and "--overwrite" in errors[0]
    # --overwrite and a resume contradict each other
    code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys, "--overwrite",
                                  "--resume_from_checkpoint", "latest")
    assert code == 2 and len(errors) == 1 and "--overwrite" in errors[0] and "--resume_from_checkpoint" in errors[0]
    assert tree(out) == before


def test_output_dir_that_is_a_file_fails_before_weights(tiny_model_dir, woven_root, tmp_path, capsys, no_weights):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file\n")
    for out in (blocker, blocker / "run"):
        code, errors, err = cli_train(tiny_model_dir, woven_root, out, capsys)
        assert code == 2 and len(errors) == 1 and str(out) in errors[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_parent_fails_before_weights(tiny_model_dir, woven_root, tmp_path, capsys, no_weights):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, errors, err = cli_train(tiny_model_dir, woven_root, locked / "run", capsys)
        assert code == 2 and len(errors) == 1 and str(locked) in errors[0], err
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o700)


def test_crop_larger_than_every_reference_image_fails_before_weights(tiny_model_dir, woven_root, tmp_path, capsys,
                                                                     no_weights):
    # the procedural images are 512 wide x 128 high: a 600 px crop would be mostly mirrored padding
    code, errors, err = cli_train(tiny_model_dir, woven_root, tmp_path / "out", capsys, "--set", "crop_size=600")
    assert code == 2 and len(errors) == 1, err
    assert "crop_size 600" in errors[0] and str(woven_root) in errors[0] and "512 wide x 128 high" in errors[0]
    assert not (tmp_path / "out").exists()


def test_disk_full_at_a_checkpoint_is_one_line_and_resumes(trained_run, tiny_model_dir, reference_root, tmp_path,
                                                           capsys, monkeypatch):
    """ENOSPC while writing checkpoint-4: one error line, no half-written checkpoint, and a rerun with
    --resume_from_checkpoint latest ends with the uninterrupted run's weights and each step logged once."""
    import errno

    import defectfill.training_utils as training_utils

    real_save = training_utils.save_file

    def disk_full_at_4(tensors, filename, *args, **kwargs):
        if "checkpoint-4" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(training_utils, "save_file", disk_full_at_4)
        code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys, "--set", "checkpointing_steps=2")
    assert code == 2 and len(errors) == 1, err
    assert "checkpoint-4" in errors[0] and "no space left on device" in errors[0]
    assert "--resume_from_checkpoint latest" in errors[0]
    assert sorted(p.name for p in out.iterdir() if "checkpoint" in p.name) == ["checkpoint-2"], "nothing half-written"
    assert {p.name for p in (out / "checkpoint-2").iterdir()} == {"model.safetensors", "optimizer-main.safetensors",
                                                                   "trainer_state.json", "lora"}
    assert not (out / "lora").exists() and not (out / "DONE").exists()

    code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys, "--set", "checkpointing_steps=2",
                                  "--resume_from_checkpoint", "latest")
    assert code == 0 and not errors, err
    a, b = lora_tensors(trained_run[1]), lora_tensors(out / "lora")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4, 5, 6]


def test_disk_full_at_the_final_lora_is_one_line_and_nothing_half_written(tiny_model_dir, reference_root, tmp_path,
                                                                         capsys, monkeypatch):
    import errno

    import defectfill.diffusion.models.lora as lora

    real_save = lora.save_file

    def disk_full_in_final(tensors, filename, *args, **kwargs):
        if f"{os.sep}.lora.tmp-" in str(filename):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *args, **kwargs)

    out = tmp_path / "run"
    steps = ("--set", "max_train_steps=2", "--set", "checkpointing_steps=100")
    with monkeypatch.context() as m:
        m.setattr(lora, "save_file", disk_full_in_final)
        code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys, *steps)
    assert code == 2 and len(errors) == 1, err
    assert str(out / "lora") in errors[0] and "no space left on device" in errors[0]
    assert not (out / "lora").exists() and not list(out.glob(".lora*")) and not (out / "DONE").exists()
    code, errors, err = cli_train(tiny_model_dir, reference_root, out, capsys, *steps,
                                  "--resume_from_checkpoint", "latest")
    assert code == 0 and (out / "DONE").read_text() == "2\n", err
    assert [r["step"] for r in metrics(out)] == [1, 2], "the restarted run does not repeat the dead run's lines"


def test_metrics_log_write_failure_is_one_output_error(tmp_path):
    from defectfill.errors import OutputError
    from defectfill.tracking import JSONLTracker

    (tmp_path / "logs" / "metrics.jsonl").mkdir(parents=True)  # a folder in the way of the file
    with pytest.raises(OutputError, match="metrics.jsonl") as exc:
        JSONLTracker(tmp_path / "logs", "rerun to resume").log({"loss": 1.0}, step=1)
    assert "rerun to resume" in str(exc.value) and "\n" not in str(exc.value)


def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    from defectfill.tracking import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3, "loss": 3}\n'
                    '{"step": 2, "loss": 4}\nnot json\n{"step": 3, "lo')
    assert truncate_metrics(path, 2) == 3  # the step-3 line, the garbage line, the half-written line
    assert path.read_text() == '{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 2, "loss": 4}\n'
    assert truncate_metrics(path, 2) == 0
    assert truncate_metrics(tmp_path / "missing.jsonl", 0) == 0 and not (tmp_path / "missing.jsonl").exists()
    assert not list(tmp_path.glob("*.tmp-*"))


def test_object_loss_weighting_reaches_the_loss(trained_run, tiny_model_dir, reference_root, tmp_path):
    """Same batch, noise and weights at step 1: L_def identical, L_obj differs between the weightings."""
    from defectfill.diffusion.trainer import train

    paper = metrics(trained_run[0])[0]  # the default weighting
    out = tmp_path / "alpha"
    train(tiny_cfg(tiny_model_dir, reference_root, out, max_train_steps=1, checkpointing_steps=100,
                   object_loss_weighting="alpha"))
    alpha = metrics(out)[0]
    assert alpha["loss_def"] == pytest.approx(paper["loss_def"], rel=1e-6)
    assert alpha["loss_attn"] == pytest.approx(paper["loss_attn"], rel=1e-6)
    assert abs(alpha["loss_obj"] - paper["loss_obj"]) > 1e-4 * abs(paper["loss_obj"])
