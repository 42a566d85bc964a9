"""The shared adapter of the GAN baselines behind the `Generator` interface (inference side).

`ConditionalGANGenerator` is the base of the class-conditional baselines (DGT, R3GAN): unfitted it
holds a config built from registry `init_args` (`config_from_init_args`); `fit` trains through the
baseline's `train` (`fit_config` points the config at the data, run folder and seed) and loads the
trained G; `from_checkpoint` reads the `final/` folder the training harness wrote (`read_final`);
`synthesize` runs G on a window around the mask (`windowed`). Training lives in `harness.py`; the
Multistage GAN (two generators and a style encoder) has its own adapter.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from defectfill.errors import ConfigError
from defectfill.generation.compositing import windowed
from defectfill.generation.run import file_sha256
from defectfill.generators import Generator
from defectfill.training_utils import load_module_state
from gan_baselines.harness import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    GANTrainConfig,
    config_from_init_args,
    fit_config,
    read_final,
    to_channels,
)


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
        """Any `config_cls` key, inline; unknown keys (and the old `config` YAML path): ConfigError."""
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
