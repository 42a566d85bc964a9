"""The benchmark's bad-input matrix, and what happens when a cell fails mid-run.

Every case runs `defectfill benchmark` in-process (`defectfill.cli.main`) and must end with exit
code 2 and exactly one `error:` line on stderr naming the offending file or key, before any
weights load (every weight loader is patched to fail the test) and without adding anything to the
case's folder (the output folder included). A grid that runs but loses a cell exits 1 and lists it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from defectfill.cli import main

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SEG = {"arch": "unet", "encoder_weights": "random", "base_channels": 8, "depth": 2, "steps": 2, "size": 32,
       "crop": 32, "batch_size": 2, "log_every": 1}
GENERATORS = [{"name": "real_only", "class_path": "real_only"}, {"name": "copy_paste", "class_path": "copy_paste"},
              {"name": "defectfill", "class_path": "defectfill", "init_args": {"max_steps": 1}}]


def generators_with_model(model) -> list[dict]:
    """GENERATORS with DefectFill's base model set (its init_args.model)."""
    return [{**g, "init_args": {**g["init_args"], "model": str(model)}} if g["name"] == "defectfill" else g
            for g in GENERATORS]


# ---- shared inputs (built once, copied into each case's folder) ----

@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[Path, Path]:
    """(data_dir, eval_data): two small procedural woven sets (64x256)."""
    from defectfill.data import make_woven_dataset

    root = tmp_path_factory.mktemp("bench-bad-data")
    return (make_woven_dataset(root / "data", n_defect=6, n_good=4, height=64, width=256, seed=0),
            make_woven_dataset(root / "eval", n_defect=4, n_good=2, height=64, width=256, seed=1))


@pytest.fixture(scope="module")
def four_channel_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny pipeline with a real 4-channel (text-to-image, not inpainting) UNet saved in place of its own."""
    import torch
    from diffusers import UNet2DConditionModel

    out = tmp_path_factory.mktemp("txt2img") / "sd-txt2img"
    shutil.copytree(tiny_model_dir, out)
    config = dict(UNet2DConditionModel.load_config(out, subfolder="unet"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**config, "in_channels": 4})
    shutil.rmtree(out / "unet")
    unet.save_pretrained(out / "unet")
    return out


@pytest.fixture(scope="module")
def grid_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bench-bad-config") / "grid.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["segmenter"], "generators": GENERATORS, "synthetic_counts": [2],
                                    "seeds": [0, 1, 2], "segmenter": SEG, "metrics": {"crop": 32},
                                    "max_images": None}))
    return path


class Case:
    """A case's folder: copies of the data it may break, and where its output would go."""

    def __init__(self, root: Path, data: Path, eval_data: Path, model: Path, four: Path, config: Path):
        self.root, self.model, self.four_channel, self.config = root, model, four, config
        self.data, self.eval = root / "data", root / "eval"
        shutil.copytree(data, self.data)
        shutil.copytree(eval_data, self.eval)
        self.out = root / "out"

    def first(self, folder: str, root: Path | None = None) -> Path:
        return min(((root or self.data) / folder).iterdir())

    def argv(self, *sets: str, out: Path | None = None, config: str | None = None, model: Path | None = None,
             data: Path | None = None, eval_data: Path | None = None) -> list[str]:
        argv = ["benchmark", "--config", config or str(self.config), "--output-dir", str(out or self.out),
                "--eval-data-dir", str(eval_data or self.eval), "--set", f"data_dir={data or self.data}"]
        if not any(s.startswith("generators=") for s in sets):
            argv += ["--set", _flow(generators_with_model(model or self.model))]
        for s in sets:
            argv += ["--set", s]
        return argv


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def garble(path: Path) -> Path:
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return path


def a_file(path: Path) -> Path:
    path.write_text("I am a file, not a folder\n")
    return path


def _flow(generators) -> str:
    return "generators=" + yaml.safe_dump(generators, default_flow_style=True).strip()


# ---- the matrix: name -> (argv from a Case, text the error line must contain) ----

def _unknown_generator_class(c):
    return c.argv(_flow([{"name": "real_only", "class_path": "real_only"},
                         {"name": "mine", "class_path": "nosuchkind"}])), "nosuchkind"


def _generator_old_spelling_kind(c):
    return c.argv(_flow([{"name": "copy_paste", "kind": "copy_paste"}])), "kind is no longer read: write class_path"


def _generator_old_spelling_fit(c):
    return c.argv(_flow([{"name": "copy_paste", "class_path": "copy_paste", "fit": {}}])), \
        "fit is no longer read: write init_args"


def _generator_second_yaml(c):
    spec = {"name": "dgt", "class_path": "dgt", "init_args": {"config": "configs/gan/dgt_small.yaml"}}
    return c.argv(_flow([spec])), \
        "dgt: init_args.config (configs/gan/dgt_small.yaml) is no longer read: write that file's keys inline"


def _unknown_generator_class_path(c):
    return c.argv(_flow([{"name": "mine", "class_path": "no_such_package.module:Gen"}])), "no_such_package"


def _bad_generator_init_arg(c):
    return c.argv(_flow([{"name": "dgt", "class_path": "dgt", "init_args": {"max_stepz": 2}}])), "max_stepz"


def _unknown_generator_key(c):
    return c.argv(_flow([{"name": "copy_paste", "class_path": "copy_paste", "fitt": {}}])), "fitt"


def _repeated_generator_name(c):
    return c.argv(_flow([{"name": "cp", "class_path": "copy_paste"}, {"name": "cp", "class_path": "copy_paste"}])), \
        "'cp'"


def _generator_counts_negative(c):
    return c.argv(_flow([{"name": "copy_paste", "class_path": "copy_paste", "counts": [-1]}])), "counts"


def _generator_init_args_not_a_mapping(c):
    return c.argv(_flow([{"name": "copy_paste", "class_path": "copy_paste", "init_args": 3}])), "init_args"


def _count_zero(c):
    return c.argv("synthetic_counts=[0]"), "synthetic_counts"


def _count_text(c):
    return c.argv("synthetic_counts=[two]"), "synthetic_counts"


def _seeds_too_few(c):
    return c.argv("seeds=[0, 1]"), "seeds"


def _seed_text(c):
    return c.argv("seeds=[0, 1, x]"), "seeds"


def _seed_repeated(c):
    return c.argv("seeds=[0, 0, 1]"), "seeds"


def _unknown_task(c):
    return c.argv("tasks=[segmenter, yolo]"), "yolo"


def _unknown_key(c):
    return c.argv("segmentr={steps: 2}"), "segmentr"


def _unknown_segmenter_key(c):
    return c.argv("segmenter={stepz: 2}"), "stepz"


def _resample_seeds_not_bool(c):
    return c.argv("stats={resample_seeds: maybe}"), "resample_seeds"


def _bad_generate_value(c):
    return c.argv("generate={dilation: -1}"), "dilation"


def _generate_sets_own_key(c):
    return c.argv("generate={num_samples: 3}"), "num_samples"


def _bad_detector_steps(c):
    return c.argv("tasks=[segmenter, rtdetr]", "detector={steps: 0}"), "detector.steps"


def _max_images_zero(c):
    return c.argv("max_images=0"), "max_images"


def _missing_config_file(c):
    return c.argv(config=str(c.root / "nope.yaml")), "nope.yaml"


def _missing_data_dir(c):
    shutil.rmtree(c.data)
    return c.argv(), str(c.data)


def _data_dir_without_masks(c):
    shutil.rmtree(c.data / "masks")
    return c.argv(), str(c.data / "masks")


def _truncated_image(c):
    return c.argv(), truncate(c.first("images")).name


def _corrupt_mask(c):
    return c.argv(), garble(c.first("masks")).name


def _mask_size_mismatch(c):
    p = c.first("masks")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(p)
    return c.argv(), p.name


def _empty_mask(c):
    p = c.first("masks")
    w, h = Image.open(p).size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(p)
    return c.argv(), p.name


def _truncated_good_image(c):
    return c.argv(), truncate(c.first("good")).name


def _manifest_without_a_row(c):
    lines = (c.data / "manifest.csv").read_text().splitlines()
    (c.data / "manifest.csv").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    return c.argv(), "manifest.csv"


def _missing_eval_data(c):
    shutil.rmtree(c.eval)
    return c.argv(), str(c.eval)


def _truncated_eval_image(c):
    return c.argv(), truncate(c.first("images", c.eval)).name


def _corrupt_eval_mask(c):
    return c.argv(), garble(c.first("masks", c.eval)).name


def _truncated_eval_good_image(c):
    return c.argv(), truncate(c.first("good", c.eval)).name


def _truncated_image_held_out(c):  # no eval_data: the held-out part comes from data_dir, checked the same
    argv = c.argv()
    i = argv.index("--eval-data-dir")
    return argv[:i] + argv[i + 2:], truncate(c.first("images")).name


def _leave_out_type_absent(c):
    return c.argv("leave_out={defect_type: nosuchtype}"), "nosuchtype"


def _four_channel_unet(c):
    return c.argv(model=c.four_channel), f"{c.four_channel}/unet/config.json: in_channels is 4"


def _missing_model_folder(c):
    return c.argv(model=c.root / "no-model"), "no-model"


def _model_folder_not_diffusers(c):
    (c.root / "empty-model").mkdir()
    return c.argv(model=c.root / "empty-model"), "empty-model"


def _output_is_file(c):
    return c.argv(), str(a_file(c.out))


def _output_parent_is_file(c):
    a_file(c.root / "blocker")
    return c.argv(out=c.root / "blocker" / "bench"), "blocker"


def _output_holds_another_grid(c):
    from defectfill.benchmark.runner import BenchmarkConfig, check_grid
    from defectfill.config import load_config

    argv = c.argv()
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(BenchmarkConfig, c.config, sets, eval_data=str(c.eval), output_dir=str(c.out))
    c.out.mkdir()
    check_grid(cfg, c.out)  # a grid.json of this config, then a run with other segmenter settings
    return c.argv(f"segmenter={json.dumps({**SEG, 'steps': 3})}"), "segmenter"


CASES = {name[1:]: fn for name, fn in sorted(globals().items())
         if name.startswith("_") and not name.startswith("__") and callable(fn)
         and name not in ("_flow", "_tree")}


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_weights(monkeypatch):
    """Every weight loader fails the test: a case must be refused before any of them runs."""
    import diffusers
    import safetensors.torch
    import torch
    import transformers

    def loaded(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    monkeypatch.setattr(diffusers.ModelMixin, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(safetensors.torch, "load_file", loaded)
    monkeypatch.setattr(torch, "load", loaded)


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 30, sorted(CASES)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), err
    return errors[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_before_any_cell(name, tmp_path, capsys, no_weights, small_data, tiny_model_dir,
                                               four_channel_model, grid_yaml):
    case = Case(tmp_path / "case", *small_data, tiny_model_dir, four_channel_model, grid_yaml)
    argv, named = CASES[name](case)
    before = _tree(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    line = _one_error_line(err)
    assert named in line, (named, line)
    assert _tree(tmp_path) == before, "the failed benchmark left files behind"


@pytest.mark.skipif(AS_ROOT, reason="root ignores folder permissions")
def test_read_only_output_parent_is_one_line(tmp_path, capsys, no_weights, small_data, tiny_model_dir,
                                             four_channel_model, grid_yaml):
    case = Case(tmp_path / "case", *small_data, tiny_model_dir, four_channel_model, grid_yaml)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(case.argv(out=locked / "bench")) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert str(locked) in line and not list(locked.iterdir())
    finally:
        locked.chmod(0o700)


# ---- a cell that fails mid-run: exit 1, the failed cell listed, the others complete ----

@pytest.fixture
def real_only_grid(tmp_path, small_data) -> list[str]:
    data, eval_data = small_data
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(data), "eval_data": str(eval_data), "tasks": ["segmenter"],
                                      "generators": [{"name": "real_only", "class_path": "real_only"}],
                                      "seeds": [0, 1, 2], "segmenter": SEG, "max_images": None}))
    return ["benchmark", "--config", str(config), "--output-dir", str(tmp_path / "out")]


def test_a_failed_cell_exits_1_and_is_listed_while_the_others_complete(real_only_grid, tmp_path, capsys,
                                                                       monkeypatch):
    from defectfill.benchmark.tasks.segmenter import SegmenterTask

    real_run = SegmenterTask.run

    def failing(self, ctx, cell, *args):
        if cell.seed == 1:
            raise RuntimeError("the segmenter diverged\nsecond line of detail")
        return real_run(self, ctx, cell, *args)

    monkeypatch.setattr(SegmenterTask, "run", failing)
    out = tmp_path / "out"
    assert main(real_only_grid) == 1
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("failed:")]
    assert failed == ["failed: segmenter-main-real_only-n0-f0-s1: RuntimeError: the segmenter diverged"], err
    assert "2 of 3 cells done, 1 failed" in err and "rerun the same command to retry the failed cells" in err
    assert not [line for line in err.splitlines() if line.startswith("error:")]
    for seed in (0, 2):
        assert json.loads((out / "cells" / f"segmenter-main-real_only-n0-f0-s{seed}" / "result.json").read_text())
    assert (out / "cells" / "segmenter-main-real_only-n0-f0-s1" / "error.json").is_file()
    assert "1 cell(s) failed" in (out / "results.md").read_text()  # the report of the cells that finished

    monkeypatch.setattr(SegmenterTask, "run", real_run)  # the rerun retries only the failed cell
    assert main(real_only_grid) == 0
    err = capsys.readouterr().err
    assert "3 of 3 cells done, 0 failed" in err and "failed:" not in err
    assert not list(out.rglob("error.json"))
