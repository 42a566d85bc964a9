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

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from defectfill.errors import ConfigError, check_writable, one_line_errors, output_errors
from defectfill.generators import Generator
from defectfill.runinfo import atomic_save_image
from defectfill.training_utils import (
    load_module_state,
    load_training_state,
    module_state,
    prune_checkpoints,
    resolve_resume,
    save_training_state,
    step_rng,
)

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
    """A baseline's config from registry `init_args`: an optional `config` YAML path, then any of
    `config_cls`'s keys; unknown keys are a ConfigError naming them and the generator."""
    from defectfill.config import load_config

    args = dict(init_args or {})
    path = args.pop("config", None)
    unknown = sorted(set(args) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{name}: unknown init_args {', '.join(unknown)} (config or {config_cls.__name__} keys)")
    cfg = load_config(config_cls, path, **args)
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


class GANHarness:
    """Runs one baseline's training under Accelerate (see the module docstring)."""

    def __init__(self, cfg: GANTrainConfig, modules: dict[str, torch.nn.Module],
                 optimizers: dict[str, torch.optim.Optimizer], name: str):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration, set_seed

        from defectfill.tracking import JSONLTracker

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
        from gan_baselines.losses import cosine_schedule

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
        from tqdm.auto import tqdm

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
        from accelerate.state import AcceleratorState

        from defectfill.runinfo import atomic_directory, write_run_info

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


# ---- the thin launchers' shared command line (train/train_dgt.py, train/train_multistage_gan.py) ----

def gan_arg_parser(description: str):
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (configs/gan/*.yaml)")
    parser.add_argument("--data_dir", help="reference data folder (images/, masks/, good/)")
    parser.add_argument("--output_dir", help="run folder for checkpoints, logs, sample grids and final/")
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")
    return parser


@one_line_errors
def run_training(args, config_cls, train_fn, label: str) -> int:
    """Load the config, train, print where the weights went; one `error:` line and exit 2 on bad input."""
    from defectfill.config import load_config

    cfg = load_config(config_cls, args.config, args.overrides, data_dir=args.data_dir,
                      output_dir=args.output_dir, max_steps=args.max_steps)
    check_writable(cfg.output_dir, "run folder")
    with output_errors(cfg.output_dir, "rerun with --resume_from_checkpoint latest"):
        final = train_fn(cfg, resume_from_checkpoint=args.resume_from_checkpoint)
    print(f"{label} weights: {final}")
    return 0


class ConditionalGANGenerator(Generator):
    """A class-conditional GAN baseline on this harness behind the `Generator` interface.

    Unfitted (`from_init_args`): holds its config; `fit(dataset, output_dir, seed)` trains it and
    loads the trained G. Fitted (`from_checkpoint(<run>/final)`, or after `fit`): `synthesize` is the
    subclass's. A subclass sets `name`, `config_cls` and implements `run_training(cfg, dataset)` and
    `build_g(cfg, num_classes, channels)`; `final/config.yaml` must record `baseline`,
    `defect_classes` and `channels`.
    """

    preserves_background = True
    config_cls: type = GANTrainConfig

    def __init__(self, cfg=None, classes: list[str] | None = None, channels: int | None = None,
                 g: torch.nn.Module | None = None, device: torch.device | str = "cpu", source: str | None = None,
                 dilation: int | None = None):
        self.cfg = cfg if cfg is not None else self.config_cls()
        self.classes, self.channels = list(classes or []), channels
        self.device = torch.device(device)
        self.g = g.to(self.device).eval() if g is not None else None
        self.source = source
        self.dilation = getattr(self.cfg, "dilation", 0) if dilation is None else int(dilation)

    @classmethod
    def run_training(cls, cfg, dataset) -> Path:
        raise NotImplementedError

    @classmethod
    def build_g(cls, cfg, num_classes: int, channels: int) -> torch.nn.Module:
        raise NotImplementedError

    def generate_window(self, window: torch.Tensor, mask: torch.Tensor, label: int,
                        generator: torch.Generator) -> torch.Tensor:
        """G's output (1, C, R, R) in [-1, 1] for a window (1, C, R, R) in [-1, 1] (C = `channels`) and its
        mask (1, 1, R, R), both on the CPU; random draws from `generator` only."""
        raise NotImplementedError

    @torch.no_grad()
    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int, defect_class: str | None = None,
                   placement=None) -> tuple[np.ndarray, dict]:
        """A window around the mask (`windowed`) at `resolution`, G on it (`generate_window`, draws from
        `seed`), composited so that pixels farther than `dilation` from the mask equal `clean`."""
        from defectfill.generation.compositing import windowed

        label = self.class_index(defect_class, seed)
        gen = torch.Generator().manual_seed(int(seed) % 2**63)

        def make(window_r: np.ndarray, mask_r: np.ndarray) -> np.ndarray:
            img = torch.from_numpy(np.array(window_r)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            m = torch.from_numpy(mask_r.astype(np.float32))[None, None]
            out = self.generate_window(to_channels(img, self.channels), m, label, gen)[0].float().cpu()
            rgb = ((out.clamp(-1, 1) + 1) * 127.5).round().byte().expand(3, -1, -1)
            return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())

        result, window = windowed(clean, mask, self.cfg.crop_size, self.cfg.resolution, self.dilation, make)
        return result, {"window_yxhw": list(window), "defect_class_index": label,
                        "defect_class_used": self.classes[label]}

    @classmethod
    def from_init_args(cls, init_args: dict | None = None):
        """`config` (a YAML of `config_cls` keys, optional) + any `config_cls` key; unknown keys: ConfigError."""
        return cls(config_from_init_args(cls.config_cls, init_args, cls.name))

    def fit(self, dataset, output_dir: str | os.PathLike, seed: int = 0) -> Path:
        """Train on `dataset` into `output_dir` with `seed`; load the trained G; return `<output_dir>/final`."""
        final = self.run_training(fit_config(self.cfg, dataset, output_dir, seed), dataset)
        fitted = type(self).from_checkpoint(final, device=self.device, dilation=self.dilation)
        self.cfg, self.classes, self.channels, self.g, self.source = (fitted.cfg, fitted.classes, fitted.channels,
                                                                      fitted.g, fitted.source)
        return final

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", dilation: int | None = None,
                        **kwargs):
        """G from `<run>/final` (config.yaml + weights.safetensors; other modules there are not loaded)."""
        if checkpoint is None:
            raise ConfigError(f"the {cls.name} generator needs checkpoint: a {cls.name} training run's final folder")
        if kwargs:
            raise ConfigError(f"{cls.name}: unknown generator_args {', '.join(sorted(kwargs))} (known: dilation)")
        config, weights = read_final(checkpoint)
        if config.get("baseline") != cls.name or "defect_classes" not in config:
            raise ConfigError(f"{Path(checkpoint) / CONFIG_NAME}: not a {cls.name} run (baseline "
                              f"{config.get('baseline')!r})")
        cfg = cls.config_cls(**{k: v for k, v in config.items() if k in cls.config_cls.__dataclass_fields__})
        classes, channels = config["defect_classes"], int(config["channels"])
        g = cls.build_g(cfg, len(classes), channels)
        load_module_state({"G": g}, {k: v for k, v in weights.items() if k.startswith("G.")}, Path(checkpoint))
        return cls(cfg, classes, channels, g, device=device, source=str(checkpoint), dilation=dilation)

    def metadata(self) -> dict:
        from defectfill.generation.run import file_sha256

        about = {"generator": self.name, "defect_classes": self.classes, "dilation": self.dilation}
        if self.source:
            about.update(checkpoint=self.source, weights_hash=file_sha256(Path(self.source) / WEIGHTS_NAME))
        return about

    @property
    def fitted(self) -> bool:
        return self.g is not None

    def class_index(self, defect_class: str | None, seed: int) -> int:
        """The class index of `defect_class` (None: one drawn from `seed`); fails when not fitted."""
        if self.g is None:
            raise RuntimeError(f"{self.name}: this generator is not fitted; call fit(dataset, output_dir) or "
                               f"load one with from_checkpoint(<run>/final)")
        if defect_class is None:
            return int(np.random.default_rng([seed, 0]).integers(len(self.classes)))
        if defect_class not in self.classes:
            raise ValueError(f"{self.name}: unknown defect class {defect_class!r}; available: "
                             f"{', '.join(self.classes)}")
        return self.classes.index(defect_class)
