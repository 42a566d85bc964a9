"""Shared training harness of the GAN baselines: Accelerate, stateless per-step randomness,
safetensors checkpoints with `--resume_from_checkpoint latest`, progress bar, JSONL logs, sample
grids and the final weights folder that `from_checkpoint` loads.

A baseline builds its modules and optimisers, then drives the loop:

    h = GANHarness(cfg, {"G": g, "D": d}, {"G": opt_g, "D": opt_d}, name="dgt")
    h.resume(resume_from_checkpoint)
    for step in h.steps():
        rng, gen = h.rng()            # numpy + torch generators of this step and process
        ... losses, h.backward(loss), optimiser steps ...
        h.log({...})
        if h.due(cfg.sample_every): h.save_grid([...rows...], "samples")
    final = h.finish(config_dict)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import ProjectConfiguration, set_seed
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from defectfill.config import load_config
from defectfill.errors import ConfigError, check_writable, one_line_errors, output_errors
from defectfill.generators import ALIASES
from defectfill.runinfo import atomic_directory, atomic_save_image, write_run_info
from defectfill.tracking import JSONLTracker
from defectfill.training_utils import (
    load_module_state,
    load_training_state,
    module_state,
    prune_checkpoints,
    resolve_resume,
    save_training_state,
    step_rng,
)
from gan_baselines.losses import cosine_schedule

WEIGHTS_NAME = "weights.safetensors"
CONFIG_NAME = "config.yaml"


@dataclass
class GANTrainConfig:
    """Keys every GAN baseline shares; each baseline's config extends this dataclass."""

    data_dir: str = "../shared/data/aitex"
    output_dir: str = "runs/gan"
    defect_types: list[str] | None = None
    max_samples: int | None = None
    mask_threshold: int = 128
    crop_size: int = 64  # window around a defect / of a clean image (source pixels)
    resolution: int = 64  # training resolution of the crops
    batch_size: int = 8
    max_steps: int = 1000
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    loss: str = "bce"  # bce | r3gan
    gamma: float = 1.0  # r3gan: R1/R2 weight at step 0 (cosine schedule)
    gamma_final: float = 0.1  # r3gan: weight at the last step
    seed: int = 0
    mixed_precision: str = "no"
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    sample_every: int = 250
    log_every: int = 10
    log_with: list[str] = field(default_factory=lambda: ["jsonl"])

    def validate(self) -> None:
        for name in ("crop_size", "resolution", "batch_size", "max_steps", "checkpointing_steps", "sample_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.resolution % 8:
            raise ConfigError(f"resolution must be a multiple of 8, got {self.resolution}")
        if self.loss not in ("bce", "r3gan"):
            raise ConfigError(f"loss must be bce or r3gan, got {self.loss!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")


def config_from_init_args(config_cls: type, init_args: dict | None, name: str):
    """A baseline's config from registry `init_args`: any of `config_cls`'s keys, inline. Unknown keys are
    a ConfigError naming them and the generator; so is `config` (a YAML path: the old second file)."""
    args = dict(init_args or {})
    if "config" in args:
        raise ConfigError(f"{name}: init_args.config ({args['config']}) is no longer read: write that file's keys "
                          f"inline under init_args (class_path: {name}, init_args: {{max_steps: 200, ...}}; see "
                          f"configs/generators/{name}.yaml)")
    unknown = sorted(set(args) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{name}: unknown init_args {', '.join(unknown)} ({config_cls.__name__} keys)")
    cfg = load_config(config_cls, **args)
    nulls = [k for k, v in args.items() if v is None]  # explicit nulls (defect_types, max_samples, ...)
    for key in nulls:
        setattr(cfg, key, None)
    if nulls and hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def fit_config(cfg, dataset, output_dir: str | os.PathLike, seed: int):
    """`cfg` pointed at `dataset`'s folder, `output_dir` and `seed` (a copy; `cfg` is unchanged)."""
    return dataclasses.replace(cfg, data_dir=str(Path(dataset.root)), output_dir=str(output_dir), seed=int(seed))


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 3, H, W) → (B, channels, H, W): the grey mean for 1-channel models."""
    return images.mean(dim=1, keepdim=True) if channels == 1 else images


def read_final(directory: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, weights) of a finished baseline run folder; errors name the file."""
    directory = Path(directory)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (directory / name).is_file():
            raise ConfigError(f"{directory / name}: missing; not a finished baseline run folder")
    return yaml.safe_load((directory / CONFIG_NAME).read_text()), load_file(str(directory / WEIGHTS_NAME))


def image_grid(rows: list[list[torch.Tensor]], path: Path, cell: int = 96) -> Path:
    """Save rows of (C,H,W) tensors in [-1, 1] (or 1-channel masks in [0, 1]) as one PNG."""
    pad = 2
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    grid = Image.new("RGB", (n_cols * (cell + pad) + pad, n_rows * (cell + pad) + pad), (40, 40, 40))
    for i, row in enumerate(rows):
        for j, t in enumerate(row):
            t = t.detach().float().cpu()
            if t.shape[0] == 1:
                arr = (t[0].clamp(0, 1) * 255).round().byte().numpy()
            else:
                arr = ((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
            grid.paste(Image.fromarray(arr).convert("RGB").resize((cell, cell), Image.NEAREST),
                       (pad + j * (cell + pad), pad + i * (cell + pad)))
    return atomic_save_image(grid, path)


def gray_rgb(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) image → 3 channels for `image_grid` (1-channel tensors there mean masks)."""
    return x.expand(3, -1, -1) if x.shape[0] == 1 else x


def pick_fabric_crops(crops: torch.Tensor, n: int, white: float = 0.96, max_white: float = 0.5) -> torch.Tensor:
    """The first `n` crops (in order) that are mostly fabric: fewer than `max_white` of their
    pixels at or above `white` ([-1, 1] scale; AITEX images have blank off-fabric columns);
    mostly-white crops only fill up the rest when too few remain."""
    blank = (crops >= white).float().flatten(1).mean(1) >= max_white
    order = sorted(range(len(crops)), key=lambda i: bool(blank[i]))  # stable: fabric first, in order
    return crops[order[:n]]


class GANHarness:
    """Runs one baseline's training under Accelerate (see the module docstring)."""

    def __init__(self, cfg: GANTrainConfig, modules: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], name: str):
        cfg.validate()
        self.cfg, self.name = cfg, name
        self.output_dir = Path(cfg.output_dir)
        trackers = [JSONLTracker(self.output_dir / "logs") if t == "jsonl" else t for t in cfg.log_with]
        self.accelerator = Accelerator(
            mixed_precision=cfg.mixed_precision, log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")))
        set_seed(cfg.seed)
        keys_m, keys_o = list(modules), list(optimizers)
        prepared = self.accelerator.prepare(*modules.values(), *optimizers.values())
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.modules = dict(zip(keys_m, prepared[: len(keys_m)]))
        self.optimizers = dict(zip(keys_o, prepared[len(keys_m):]))
        self.plain = {k: self.accelerator.unwrap_model(m) for k, m in self.modules.items()}
        self.step = 0
        self._progress = None
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / CONFIG_NAME).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
            self.accelerator.init_trackers(name)

    # ---- randomness, logging ----
    def rng(self) -> tuple[np.random.Generator, torch.Generator]:
        """Generators for this step and process only: resumed runs replay the same draws."""
        return step_rng(self.cfg.seed, self.step, self.accelerator.process_index)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def gamma(self) -> float:
        return cosine_schedule(self.step, self.cfg.max_steps, self.cfg.gamma, self.cfg.gamma_final)

    def due(self, every: int) -> bool:
        """True after a step whose 1-based number is a multiple of `every` (and on the last step)."""
        n = self.step + 1
        return n % every == 0 or n == self.cfg.max_steps

    def log(self, values: dict[str, float]) -> None:
        if self.due(self.cfg.log_every):
            self.accelerator.log(values, step=self.step + 1)
        if self._progress is not None and values:
            key = next(iter(values))
            self._progress.set_postfix({key: f"{values[key]:.4f}"})

    def save_grid(self, rows: list[list[torch.Tensor]], prefix: str = "samples") -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        return image_grid(rows, self.output_dir / "samples" / f"{prefix}-{self.step + 1:06d}.png")

    # ---- the loop ----
    def steps(self):
        self._progress = tqdm(total=self.cfg.max_steps, initial=self.step, desc=self.name,
                              disable=not self.accelerator.is_local_main_process)
        for m in self.modules.values():
            m.train()
        while self.step < self.cfg.max_steps:
            yield self.step
            self.step += 1
            self._progress.update(1)
            if self.step % self.cfg.checkpointing_steps == 0 and self.step < self.cfg.max_steps:
                self.save_checkpoint()
        self._progress.close()

    # ---- checkpoints ----
    def save_checkpoint(self) -> None:
        if self.accelerator.is_main_process:
            save_training_state(self.output_dir / f"checkpoint-{self.step}", module_state(self.plain),
                                self.optimizers, self.step)
            prune_checkpoints(self.output_dir, self.cfg.checkpoints_total_limit)
        self.accelerator.wait_for_everyone()

    def resume(self, resume_from_checkpoint: str | None) -> None:
        directory = resolve_resume(self.output_dir, resume_from_checkpoint)
        if directory is None:
            if resume_from_checkpoint:
                self.accelerator.print(f"no checkpoint in {self.output_dir}; starting from scratch")
            return
        tensors, state = load_training_state(directory, self.optimizers)
        load_module_state(self.plain, tensors, directory)
        self.step = int(state["global_step"])
        self.accelerator.print(f"resumed from {directory} at step {self.step}")

    def finish(self, extra: dict | None = None) -> Path:
        """Write `<output_dir>/final/` (weights + config + run_info) and release Accelerate."""
        final = self.output_dir / "final"
        self.accelerator.wait_for_everyone()
        try:
            if self.accelerator.is_main_process:
                config = {**dataclasses.asdict(self.cfg), "baseline": self.name, **(extra or {})}
                with atomic_directory(final) as tmp:
                    save_file(module_state(self.plain), str(tmp / WEIGHTS_NAME))
                    (tmp / CONFIG_NAME).write_text(yaml.safe_dump(config, sort_keys=False))
                    write_run_info(tmp, config, self.cfg.seed, global_step=self.step,
                                   num_processes=self.accelerator.num_processes)
                write_run_info(self.output_dir, config, self.cfg.seed, global_step=self.step, final_dir=str(final))
        finally:
            self.accelerator.end_training()
            AcceleratorState._reset_state()
        return final


# ---- the thin launchers' shared command line (train/train_dgt.py, train_multistage_gan.py, train_r3gan.py) ----

def gan_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True,
                        help="YAML file: configs/generators/<name>.yaml (class_path + init_args), or config keys")
    parser.add_argument("--data_dir", help="reference data folder (images/, masks/, good/)")
    parser.add_argument("--output_dir", help="run folder for checkpoints, logs, sample grids and final/")
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")
    return parser


FIT_KEYS = ("data_dir", "output_dir", "seed")  # a generator YAML's top-level keys that are config keys too


def generator_file_args(path: str | os.PathLike, generator: str) -> dict | None:
    """The config keys of a generator YAML (`class_path` naming `generator`, its `init_args`, and top-level
    data_dir / output_dir / seed), or None when `path` is a plain mapping of config keys."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".splitlines()[0]) from exc
    if not isinstance(loaded, dict) or not {"class_path", "init_args"} & set(loaded):
        return None
    class_path = loaded.get("class_path")
    if ALIASES.get(class_path, class_path) != ALIASES[generator]:
        raise ConfigError(f"{path}: class_path {class_path!r} is not the {generator} generator")
    unknown = sorted(set(loaded) - {"class_path", "init_args", *FIT_KEYS})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} (class_path, init_args, "
                          f"{', '.join(FIT_KEYS)})")
    if not isinstance(loaded.get("init_args") or {}, dict):
        raise ConfigError(f"{path}: init_args must be a mapping of config keys")
    return {**{k: loaded[k] for k in FIT_KEYS if k in loaded}, **(loaded.get("init_args") or {})}


def launcher_config(config_cls: type, args, generator: str):
    """The training config of a launcher's arguments: the `--config` file, then `--set`, then the flags."""
    flags = {"data_dir": args.data_dir, "output_dir": args.output_dir, "max_steps": args.max_steps}
    values = generator_file_args(args.config, generator)
    if values is None:  # a plain YAML of config keys
        return load_config(config_cls, args.config, args.overrides, **flags)
    for item in args.overrides:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r}: expected key=value")
        values[key.strip()] = raw
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return config_from_init_args(config_cls, values, generator)
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}") from exc


@one_line_errors
def run_training(args, config_cls, train_fn, label: str, generator: str) -> int:
    """Load the config (`launcher_config`), train, print where the weights went; one `error:` line and exit 2
    on bad input. `generator` is the registry name a generator YAML's class_path must name."""
    cfg = launcher_config(config_cls, args, generator)
    check_writable(cfg.output_dir, "run folder")
    with output_errors(cfg.output_dir, "rerun with --resume_from_checkpoint latest"):
        final = train_fn(cfg, resume_from_checkpoint=args.resume_from_checkpoint)
    print(f"{label} weights: {final}")
    return 0
