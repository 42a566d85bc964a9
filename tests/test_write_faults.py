"""Every writer under a write fault: disk full (ENOSPC) or a read-only file system (EROFS), injected at
the rename that makes each output file or folder final (``os.replace``, which every atomic writer uses;
root ignores folder permissions, so CI cannot make a folder read-only). Each command ends with exit 2
and one ``error:`` line naming the file and what to do, leaves no temporary file, and (where the command
resumes) a rerun without the fault finishes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from defectfill.cli import main

REPO = Path(__file__).resolve().parents[1]
HINTS = {errno.ENOSPC: "free disk space", errno.EROFS: "fix the path or its permissions"}


@pytest.fixture(scope="module")
def shade_fit(woven_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shade") / "fit"
    assert main(["fit", "--generator", "shade", "--data-dir", str(woven_root), "--output-dir", str(out)]) == 0
    return out / "final"


def _commands(woven_root: Path, tiny_model_dir: Path, shade: Path, out: Path) -> dict[str, list[str]]:
    return {
        "train": ["train", "--config", str(REPO / "configs" / "defectfill" / "tiny.yaml"), "--set",
                  f"model={tiny_model_dir}", "--set", f"data_dir={woven_root}", "--set", f"output_dir={out}",
                  "--set", "max_train_steps=2", "--set", "checkpointing_steps=1", "--set", "train_batch_size=1"],
        "generate": ["generate", "--generator", "shade", "--checkpoint", str(shade), "--clean-dir", str(woven_root / "good"), "--data-dir",
                     str(woven_root), "--output-dir", str(out), "--num-samples", "3"],
        "fit": ["fit", "--generator", "copy_paste", "--data-dir", str(woven_root), "--output-dir", str(out)],
        "detect build": ["detect", "build", "--data-dir", str(woven_root), "--output-dir", str(out)],
        "pretrain-base": ["pretrain-base", "--data-dir", str(woven_root), "--output-dir", str(out), "--no-card",
                          *[a for kv in PRETRAIN_TINY for a in ("--set", kv)]],
    }


PRETRAIN_TINY = ("resolution=32", "crop_size=32", "vae_channels=[16, 32]", "unet_channels=[32, 64]", "text_hidden=32",
                 "text_layers=1", "attention_head_dim=4", "vae_batch_size=2", "batch_size=2", "lr_warmup_steps=1",
                 "vae_steps=2", "unet_steps=2", "checkpointing_steps=1", "log_every=1", "eval_fraction=0",
                 "num_threads=1")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["enospc", "erofs"])
@pytest.mark.parametrize("command", ["train", "generate", "fit", "detect build", "pretrain-base"])
def test_write_fault_is_one_line_leaves_no_temp_file_and_the_rerun_finishes(command, code, woven_root,
                                                                           tiny_model_dir, shade_fit, tmp_path,
                                                                           monkeypatch, capsys):
    out = tmp_path / "out"
    argv = _commands(woven_root, tiny_model_dir, shade_fit, out)[command]
    real_replace, renames = os.replace, []

    def faulty_replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().is_relative_to(out.resolve()):
            renames.append(dst)
            if len(renames) == 2 or command == "detect build":  # detect build makes its folder in one rename
                raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", faulty_replace)
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    assert Path(renames[-1]).name in errors[0] and HINTS[code] in errors[0], errors[0]
    left = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert not left, left

    monkeypatch.setattr(os, "replace", real_replace)
    rerun = argv + (["--resume_from_checkpoint", "latest"] if command == "train" else [])
    assert main(rerun) == 0, capsys.readouterr().err
