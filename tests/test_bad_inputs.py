"""The bad-input matrix: train, generate, detect and the GAN launchers given bad or odd input.

Every case runs the real command line in-process (`defectfill.cli.main`) and must end with exit
code 2 and exactly one `error:` line on stderr naming the offending file or key, before any
weights load (every weight loader is patched to fail the test) and without adding anything to the
case's folder. The benchmark's cases are in `test_bad_inputs_benchmark.py`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectfill.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "defectfill" / "tiny.yaml"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---- shared inputs (built once, copied into each case's folder) ----

@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, woven_root, tmp_path_factory) -> Path:
    """A finished 1-step DefectFill run on the tiny model (its lora/ is a complete LoRA folder)."""
    out = tmp_path_factory.mktemp("bad-inputs-train") / "run"
    code = main(["train", "--config", str(TINY_YAML), "--set", f"model={tiny_model_dir}",
                 "--set", f"data_dir={woven_root}", "--set", f"output_dir={out}", "--set", "max_train_steps=1",
                 "--set", "checkpointing_steps=100", "--set", "train_batch_size=1"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def other_base(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's folder with wider UNet blocks and text encoder in its configs: another base
    architecture (only configs are read before the check fails; its weights are never loaded)."""
    out = tmp_path_factory.mktemp("other-base") / "model"
    shutil.copytree(tiny_model_dir, out)
    unet = json.loads((out / "unet" / "config.json").read_text())
    unet.update(block_out_channels=[64, 128], cross_attention_dim=64)
    (out / "unet" / "config.json").write_text(json.dumps(unet))
    text = json.loads((out / "text_encoder" / "config.json").read_text())
    text["hidden_size"] = 64
    (out / "text_encoder" / "config.json").write_text(json.dumps(text))
    return out


@pytest.fixture(scope="module")
def four_channel_model(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("txt2img") / "model"
    shutil.copytree(tiny_model_dir, out)
    unet = json.loads((out / "unet" / "config.json").read_text())
    unet["in_channels"] = 4
    (out / "unet" / "config.json").write_text(json.dumps(unet))
    return out


class Case:
    """A case's folder: copies of the inputs it may break, and where its output would go."""

    def __init__(self, root: Path, woven: Path, model: Path, run: Path, other: Path, four: Path):
        self.root, self.model, self.other_base, self.four_channel = root, model, other, four
        self.data = root / "data"
        shutil.copytree(woven, self.data)
        self.lora = root / "lora"
        shutil.copytree(run / "lora", self.lora)
        self.clean = root / "clean"
        self.clean.mkdir()
        for p in sorted((woven / "good").glob("*.png"))[:2]:
            shutil.copy(p, self.clean / p.name)
        self.out = root / "out"
        self.finished = run

    def first(self, folder: str) -> Path:
        return min((self.data / folder).iterdir())

    def train(self, *sets: str, config: str | None = None, out: Path | None = None) -> list[str]:
        argv = ["train", "--config", config or str(TINY_YAML), "--set", f"model={self.model}",
                "--set", f"data_dir={self.data}", "--set", f"output_dir={out or self.out}"]
        for s in sets:
            argv += ["--set", s]
        return argv

    def generate(self, *extra: str, out: Path | None = None) -> list[str]:
        return ["generate", "--lora", str(self.lora), "--clean-dir", str(self.clean), "--output-dir", str(out or self.out),
                "--num-samples", "2", "--steps", "2", "--candidates", "2", *extra]

    def masks_folder(self, shape=None, value=255) -> Path:
        masks = self.root / "masks"
        masks.mkdir(exist_ok=True)
        for p in sorted(self.clean.iterdir()):
            w, h = Image.open(p).size
            m = np.zeros(shape or (h, w), np.uint8)
            m[10:20, 30:40] = value
            Image.fromarray(m).save(masks / p.name)
        return masks

    def detect_dataset(self) -> Path:
        """A minimal data.yaml (never reached: the cases fail earlier)."""
        d = self.root / "det"
        d.mkdir(exist_ok=True)
        (d / "data.yaml").write_text(f"path: {d}\ntrain: train/images\nval: val/images\nnames: {{0: defect}}\n")
        return d / "data.yaml"


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


# ---- the matrix: name -> (build argv from a Case, text the error line must contain) ----

def _train_truncated_image(c):
    return c.train(), truncate(c.first("images")).name


def _train_corrupt_mask(c):
    return c.train(), garble(c.first("masks")).name


def _train_size_mismatch(c):
    p = c.first("masks")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(p)
    return c.train(), p.name


def _train_all_ones_mask(c):
    p = c.first("masks")
    w, h = Image.open(p).size
    Image.fromarray(np.full((h, w), 255, np.uint8)).save(p)
    return c.train(), p.name


def _train_empty_mask(c):
    p = c.first("masks")
    w, h = Image.open(p).size
    Image.fromarray(np.zeros((h, w), np.uint8)).save(p)
    return c.train(), p.name


def _train_truncated_good(c):
    return c.train(), truncate(c.first("good")).name


def _train_16bit_mask_below_half(c):  # a 16-bit soft mask of 40 % grey: no pixel is defect at 128/255
    p = c.first("masks")
    w, h = Image.open(p).size
    m = np.zeros((h, w), np.uint16)
    m[10:20, 30:40] = int(0.4 * 65535)
    Image.fromarray(m).save(p)
    return c.train(), p.name


def _train_bad_manifest(c):
    (c.data / "manifest.csv").write_text("name,kind\nx,y\n")
    return c.train(), "manifest.csv"


def _train_missing_data(c):
    shutil.rmtree(c.data)
    return c.train(), str(c.data)


def _train_missing_model(c):
    return c.train(f"model={c.root / 'no-model'}"), "no-model"


def _train_four_channel_unet(c):
    return c.train(f"model={c.four_channel}"), "in_channels"


def _train_missing_config(c):
    return c.train(config=str(c.root / "nope.yaml")), "nope.yaml"


def _train_bad_yaml(c):
    p = c.root / "bad.yaml"
    p.write_text("model: [unclosed\n")
    return c.train(config=str(p)), "bad.yaml"


def _train_unknown_key(c):
    return c.train("learning_rat=1e-4"), "learning_rat"


def _train_output_is_file(c):
    return c.train(), str(a_file(c.out))


def _train_output_parent_is_file(c):
    a_file(c.root / "blocker")
    return c.train(out=c.root / "blocker" / "run"), "blocker"


def _train_finished_folder(c):
    shutil.copytree(c.finished, c.out)
    return c.train(), str(c.out)


def _train_manifest_row_without_image(c):
    with (c.data / "manifest.csv").open("a") as f:
        f.write("ghost_0001,hole,woven_00,defect,1024,256,10,images/ghost_0001.png,masks/ghost_0001.png\n")
    return c.train(), "ghost_0001"


def _train_tracker_not_installed(c):
    from accelerate import utils

    from defectfill.config import TRACKER_PACKAGES

    missing = [t for t in TRACKER_PACKAGES if not getattr(utils, f"is_{t}_available")()]
    if not missing:
        pytest.skip("every tracker Accelerate knows is installed here")
    return c.train(f"log_with=[{missing[0]}]"), f"pip install {TRACKER_PACKAGES[missing[0]]}"


TRAIN_CONFIG_CASES = {  # override -> key named in the error
    "mask_threshold=0": "mask_threshold", "mask_threshold=300": "mask_threshold", "crop_size=0": "crop_size",
    "crop_size=100000": "crop_size", "resolution=100": "resolution", "lora_rank=0": "lora_rank",
    "alpha=1.5": "alpha", "train_batch_size=0": "train_batch_size", "mixed_precision=fp8": "mixed_precision",
    "max_train_steps=ten": "max_train_steps", "lr_scheduler=foo": "lr_scheduler",
    "log_with=[wandbx]": "log_with", "lr_warmup_steps=-1": "lr_warmup_steps",
    "object_loss_weighting=sum": "object_loss_weighting",
}


def _gen_unknown_generator(c):
    return c.generate("--generator", "nosuchgen"), "nosuchgen"


def _gen_unimportable_generator(c):
    return c.generate("--generator", "nosuch.module:Gen"), "nosuch.module:Gen"


def _gen_not_a_generator(c):
    return c.generate("--generator", "pathlib:Path"), "pathlib:Path"


def _gen_missing_lora(c):
    shutil.rmtree(c.lora)
    return c.generate(), str(c.lora)


def _gen_corrupt_lora_json(c):
    (c.lora / "defectfill_lora.json").write_text("{not json")
    return c.generate(), "defectfill_lora.json"


def _gen_lora_json_without_base(c):
    meta = json.loads((c.lora / "defectfill_lora.json").read_text())
    del meta["base_model"]
    (c.lora / "defectfill_lora.json").write_text(json.dumps(meta))
    return c.generate(), "base_model"


def _gen_lora_without_weights(c):
    (c.lora / "pytorch_lora_weights.safetensors").unlink()
    return c.generate(), "pytorch_lora_weights.safetensors"


def _gen_truncated_lora_weights(c):
    return c.generate(), truncate(c.lora / "pytorch_lora_weights.safetensors").name


def _gen_lora_without_token(c):
    (c.lora / "learned_embeds.safetensors").unlink()
    return c.generate(), "learned_embeds.safetensors"


def _gen_lora_other_base(c):
    return c.generate("--model", str(c.other_base)), str(c.other_base)


def _gen_four_channel_model(c):
    return c.generate("--model", str(c.four_channel)), "in_channels"


def _gen_missing_clean(c):
    shutil.rmtree(c.clean)
    return c.generate(), str(c.clean)


def _gen_truncated_clean(c):
    return c.generate(), truncate(max(c.clean.iterdir())).name


def _gen_corrupt_mask_in_folder(c):
    masks = c.masks_folder()
    return c.generate("--masks", str(masks)), garble(min(masks.iterdir())).name


def _gen_mask_size_mismatch(c):
    masks = c.masks_folder(shape=(32, 32))
    return c.generate("--masks", str(masks)), min(masks.iterdir()).name


def _gen_empty_mask_in_folder(c):
    masks = c.masks_folder(value=0)
    return c.generate("--masks", str(masks)), min(masks.iterdir()).name


def _gen_truncated_reference(c):
    return c.generate("--data-dir", str(c.data)), truncate(c.first("images")).name


def _gen_output_is_file(c):
    return c.generate(), str(a_file(c.out))


def _gen_output_parent_is_file(c):
    a_file(c.root / "blocker")
    return c.generate(out=c.root / "blocker" / "gen"), "blocker"


def _gen_missing_roi(c):
    return c.generate("--roi-dir", str(c.root / "no-roi")), "no-roi"


def _gen_whole_image_masks(c):
    masks = c.masks_folder()
    for p in masks.iterdir():
        w, h = Image.open(p).size
        Image.fromarray(np.full((h, w), 255, np.uint8)).save(p)
    return c.generate("--masks", str(masks)), min(masks.iterdir()).name


def _gen_clean_too_small_for_auto_masks(c):
    small = c.clean / "tiny.png"
    Image.fromarray(np.full((12, 12, 3), 128, np.uint8)).save(small)
    return c.generate("--data-dir", str(c.data)), "tiny.png"


def _gen_no_fabric_for_auto_masks(c):
    for p in c.clean.iterdir():  # saturated white: no fabric anywhere
        w, h = Image.open(p).size
        Image.fromarray(np.full((h, w, 3), 255, np.uint8)).save(p)
    return c.generate("--data-dir", str(c.data)), str(c.clean)


GENERATE_CONFIG_CASES = {  # extra flags -> key named in the error
    ("--set", "resolution=100"): "resolution", ("--set", "crop_size=0"): "crop_size",
    ("--set", "mask_threshold=0"): "mask_threshold", ("--set", "mask_threshold=256"): "mask_threshold",
    ("--set", "crop_size=100000"): "crop_size", ("--num-samples", "0"): "num_samples",
    ("--selection", "fid"): "selection", ("--set", "dilation=-1"): "dilation",
    ("--set", "lpips_net=resnet"): "lpips_net", ("--set", "min_visible_fraction=2"): "min_visible_fraction",
}


def _launcher(name: str):
    """A train/ launcher as a module (train/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "train" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gan(c, launcher: str, config: str, *extra: str, out: Path | None = None):
    module = _launcher(launcher)
    argv = ["--config", str(REPO / "configs" / "generators" / config), "--data_dir", str(c.data),
            "--output_dir", str(out or c.out), "--max_steps", "1", *extra]
    return lambda: module.main(module.parse_args(argv))


def _gan_multistage_truncated_image(c):
    return _gan(c, "train_multistage_gan", "multistage.yaml"), truncate(c.first("images")).name


def _gan_multistage_output_is_file(c):
    return _gan(c, "train_multistage_gan", "multistage.yaml"), str(a_file(c.out))


def _gan_dgt_corrupt_mask(c):
    return _gan(c, "train_dgt", "dgt.yaml"), garble(c.first("masks")).name


def _gan_dgt_unknown_key(c):
    return _gan(c, "train_dgt", "dgt.yaml", "--set", "steps_per_epoch=3"), "steps_per_epoch"


def _gan_config_names_another_generator(c):
    return _gan(c, "train_dgt", "r3gan.yaml"), "class_path 'r3gan' is not the dgt generator"


def _detect_build_missing_reference(c):
    return ["detect", "build", "--data-dir", str(c.root / "no-ref"), "--output-dir", str(c.out)], "no-ref"


def _detect_build_truncated_image(c):
    return ["detect", "build", "--data-dir", str(c.data), "--output-dir", str(c.out)], truncate(c.first("images")).name


def _detect_build_corrupt_mask(c):
    return ["detect", "build", "--data-dir", str(c.data), "--output-dir", str(c.out)], garble(c.first("masks")).name


def _detect_build_out_is_file(c):
    return ["detect", "build", "--data-dir", str(c.data), "--output-dir", str(a_file(c.out))], str(c.out)


def _detect_build_class_names_and_single_class(c):
    return ["detect", "build", "--data-dir", str(c.data), "--output-dir", str(c.out), "--class-names", "hole",
            "--set", "single_class=true"], "single_class"


def _detect_build_class_names_match_nothing(c):
    types = sorted({line.split(",")[1] for line in (c.data / "manifest.csv").read_text().splitlines()[1:]})
    return ["detect", "build", "--data-dir", str(c.data), "--output-dir", str(c.out),
            "--class-names", ",".join([*types, "holes"])], "holes"


def _detect_build_bad_optimizer(c):
    return ["detect", "build", "--data-dir", str(c.data), "--output-dir", str(c.out), "--set", "optimizer=adamz"], \
        "optimizer"


def _detect_train_missing_yaml(c):
    return ["detect", "train", "--data-yaml", str(c.root / "none.yaml"), "--output-dir", str(c.out)], "none.yaml"


def _detect_train_bad_yaml(c):
    p = c.root / "data.yaml"
    p.write_text("names: [a\n")
    return ["detect", "train", "--data-yaml", str(p), "--output-dir", str(c.out)], "data.yaml"


def _detect_train_output_is_file(c):
    return ["detect", "train", "--data-yaml", str(c.detect_dataset()), "--output-dir", str(a_file(c.out))], str(c.out)


def _detect_train_unknown_key(c):
    return ["detect", "train", "--data-yaml", str(c.detect_dataset()), "--output-dir", str(c.out),
            "--set", "epoch=3"], "epoch"


def _detect_eval_missing_weights(c):
    return ["detect", "eval", "--weights", str(c.root / "best.pt"), "--data-yaml", str(c.detect_dataset()),
            "--output-dir", str(c.out)], "best.pt"


CASES = {name[1:]: fn for name, fn in sorted(globals().items())
         if name.startswith(("_train_", "_gen_", "_detect_", "_gan_")) and callable(fn)}


def _case_of_train_config(override, key):
    return lambda c: (c.train(override), key)


def _case_of_generate_flags(flags, key):
    return lambda c: (c.generate(*flags), key)


for _override, _key in TRAIN_CONFIG_CASES.items():
    CASES[f"train_config_{_override}"] = _case_of_train_config(_override, _key)
for _flags, _key in GENERATE_CONFIG_CASES.items():
    CASES[f"gen_config_{'_'.join(_flags)}"] = _case_of_generate_flags(_flags, _key)


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def no_weights(monkeypatch):
    """Every weight loader fails the test: a case must be refused before any of them runs."""
    import diffusers
    import safetensors.torch
    import torch
    import transformers

    from defectfill.detect import rtdetr

    def loaded(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad input was reported")

    monkeypatch.setattr(diffusers.ModelMixin, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(loaded))
    monkeypatch.setattr(safetensors.torch, "load_file", loaded)
    monkeypatch.setattr(torch, "load", loaded)
    monkeypatch.setattr(rtdetr, "_import_rtdetr", loaded)


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 60, len(CASES)
    assert {n.split("_")[0] for n in CASES} == {"train", "gen", "detect", "gan"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_before_any_weights(name, tmp_path, capsys, no_weights, woven_root,
                                                  tiny_model_dir, finished_run, other_base, four_channel_model):
    case = Case(tmp_path / "case", woven_root, tiny_model_dir, finished_run, other_base, four_channel_model)
    argv, named = CASES[name](case)
    before = _tree(tmp_path)
    capsys.readouterr()
    code = argv() if callable(argv) else main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), err
    assert named in errors[0], (named, errors[0])
    assert _tree(tmp_path) == before, "the failed command left files behind"


@pytest.mark.skipif(AS_ROOT, reason="root ignores folder permissions")
@pytest.mark.parametrize("command", ["train", "generate"])
def test_read_only_output_parent_is_one_line(command, tmp_path, capsys, no_weights, woven_root, tiny_model_dir,
                                             finished_run, other_base, four_channel_model):
    case = Case(tmp_path / "case", woven_root, tiny_model_dir, finished_run, other_base, four_channel_model)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = case.train(out=locked / "run") if command == "train" else case.generate(out=locked / "gen")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and str(locked) in err and not list(locked.iterdir())
    finally:
        locked.chmod(0o700)
