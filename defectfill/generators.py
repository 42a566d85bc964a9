"""The one generator interface and registry shared by DefectFill and every baseline.

A generator is named in YAML by `class_path` (`package.module:Class` or a short alias) and
`init_args`; `build_unfitted(class_path, init_args)` makes it, `fit(dataset, output_dir, seed)`
trains it once on reference defects and returns a checkpoint folder, `from_checkpoint(folder)`
loads it and `synthesize(clean, mask, seed, defect_class)` turns a clean image and a mask into a
defect image. `run_generation` (defectfill.generation.run) plans slots, resumes, shards across processes
and writes every generator's output with the same `SampleWriter`. `defectfill fit`, `defectfill
generate` and the benchmark call only this interface, so `defectfill` never imports `gan_baselines`
and nothing outside a generator's own files branches on which generator it is.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectfill.errors import ConfigError

ALIASES = {
    "defectfill": "defectfill.diffusion.synthesizer:DefectFillSynthesizer",
    "copy_paste": "gan_baselines.copy_paste.generator:CopyPasteGenerator",
    "multistage": "gan_baselines.multistage.generator:MultistageGANGenerator",
    "dgt": "gan_baselines.dgt.generator:DGTGenerator",
    "r3gan": "gan_baselines.r3gan.generator:R3GANGenerator",
    "shade": "gan_baselines.controls.generator:ShadeGenerator",
    "noise_blob": "gan_baselines.controls.generator:NoiseBlobGenerator",
}


@dataclass
class Sample:
    """One generated sample; ``name`` is the file stem shared by all of its files (written by
    `defectfill.generation.samples.SampleWriter`)."""

    name: str
    image: np.ndarray  # uint8 HxW (grey) or HxWx3 (RGB)
    mask: np.ndarray  # bool HxW (non-zero = defect)
    defect_class: str
    sidecar: dict = field(default_factory=dict)  # JSON-able metadata (seed, model, scores, ...)
    clean: np.ndarray | None = None  # defect-free input, same shape as image


@dataclass
class PlacedMask:
    """Where an auto-placed mask came from: the reference defect whose mask it is and the transform
    (flips, turns, scale, position: a `defectfill.data.placement.Placement`) that put it there.
    A generator that pastes real defects uses it to paste exactly the defect the mask outlines."""

    reference: Any  # defectfill.data.datasets.ReferenceSample
    placement: Any  # defectfill.data.placement.Placement


class Generator(ABC):
    """`synthesize(clean, mask, seed)` → (defect image, info dict).

    `clean` is uint8 HxW (grayscale) or HxWx3, `mask` bool HxW and non-empty; the result has the
    clean image's shape and dtype. `placement` (a `PlacedMask`, or None for a user's mask) says
    which reference defect an auto mask was taken from; generators may ignore it. Generators with
    `preserves_background = True` leave every
    pixel farther than `dilation` from the mask bit-identical to `clean`.
    """

    name = "generator"
    preserves_background = False
    class_conditional = True  # synthesizes a named defect class (user masks then need --defect-type)
    dilation = 0

    @classmethod
    def from_init_args(cls, init_args: dict | None = None) -> "Generator":
        """An unfitted generator from its YAML `init_args` (default: `cls(**init_args)`). Cheap: no
        training, no data; raise a ConfigError naming the bad key."""
        try:
            return cls(**(init_args or {}))
        except TypeError as exc:
            raise ConfigError(f"{cls.__name__}: init_args: {' '.join(str(exc).split())}") from exc

    @classmethod
    def check_init_args(cls, init_args: dict | None = None) -> None:
        """Checks of `init_args` run before any heavy work (files exist, values valid). Default:
        `from_init_args` succeeds."""
        cls.from_init_args(init_args)

    @classmethod
    def check(cls, cfg) -> None:
        """Cheap checks of a `GenerateConfig` for this generator (files, configs; no weights), run
        before any heavy work; raise a DefectfillError naming the file. Default: none."""

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", **kwargs) -> "Generator":
        """Load a fitted generator from the folder its `fit` returned; `kwargs` are `generator_args`."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from a checkpoint")

    @classmethod
    def from_generate_config(cls, cfg, device="cpu") -> "Generator":
        """The generator a `GenerateConfig` names (`cfg.checkpoint`, `cfg.dilation`, `cfg.generator_args`)."""
        args = {"dilation": cfg.dilation, **(cfg.generator_args or {})}  # one background-fidelity band for all
        return cls.from_checkpoint(cfg.checkpoint, device=device, **args)

    @classmethod
    def checkpoint_defaults(cls, cfg) -> dict:
        """Facts the checkpoint records (`data_dir`: its training data, `defect_types`) that generation
        uses where `cfg` leaves them unset. Default: none."""
        return {}

    def fit(self, dataset, output_dir: str | os.PathLike, seed: int = 0) -> Path:
        """Train on a `ReferenceDataset` (`dataset.root` is its folder) with `seed`; write weights
        (safetensors) + config under `output_dir`; return the checkpoint folder `from_checkpoint` loads."""
        raise NotImplementedError(f"{type(self).__name__} is not trainable here")

    @abstractmethod
    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int, defect_class: str | None = None,
                   placement: PlacedMask | None = None) -> tuple[np.ndarray, dict]:
        """One defect image for (clean, mask, seed); `info` goes into the sample's sidecar."""

    def metadata(self) -> dict:
        """Generator-level facts for every sidecar (name, weights, their hash, settings)."""
        return {"generator": self.name}

    def generate(self, clean_images, masks, seeds, defect_classes=None, names=None, placements=None) -> list:
        """`Sample`s for parallel lists of clean images, masks and seeds (in memory, no files)."""
        if not len(clean_images) == len(masks) == len(seeds):
            raise ValueError("clean_images, masks and seeds must have the same length")
        classes = defect_classes or ["defect"] * len(seeds)
        samples = []
        for i, (clean, mask, seed) in enumerate(zip(clean_images, masks, seeds)):
            image, info = self.synthesize(clean, mask, int(seed), classes[i],
                                          placements[i] if placements else None)
            name = names[i] if names else f"{i:06d}"
            samples.append(Sample(name, image, mask, classes[i], {**self.metadata(), "seed": int(seed), **info},
                                  clean=clean))
        return samples


def import_class(path: str):
    """`package.module:Class` (or `package.module.Class`, or an alias) → the class."""
    name = path
    path = ALIASES.get(path, path)
    module, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module or not attr:
        raise ConfigError(f"generator {name!r} is unknown: use one of {', '.join(ALIASES)} "
                          "or a class path package.module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"generator {name!r} cannot be imported ({' '.join(str(exc).split())}); use one of "
                          f"{', '.join(ALIASES)} or a class path package.module:Class") from exc
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise ConfigError(f"generator {name!r} is not a defectfill.generators.Generator subclass")
    return cls


def build_generator(cfg, device="cpu") -> Generator:
    """The fitted generator a `GenerateConfig` names, loaded on `device`."""
    return import_class(cfg.generator).from_generate_config(cfg, device=device)


def build_unfitted(class_path: str, init_args: dict | None = None) -> Generator:
    """The unfitted generator `class_path` (or an alias) + `init_args` name, ready for `fit`."""
    if init_args is not None and not isinstance(init_args, dict):
        raise ConfigError(f"generator {class_path!r}: init_args must be a mapping, got {init_args!r}")
    return import_class(class_path).from_init_args(dict(init_args or {}))


@dataclass
class FitConfig:
    """`defectfill fit`: which generator (`class_path` + `init_args`), on which reference data, where, seed."""

    class_path: str = ""
    init_args: dict | None = None
    data_dir: str = ""
    output_dir: str = "runs/fit"
    seed: int = 0

    def validate(self) -> None:
        if not self.class_path:
            raise ConfigError("class_path is required (an alias such as dgt, or package.module:Class)")
        if not self.data_dir:
            raise ConfigError("data_dir is required (a reference folder: images/, masks/, good/, manifest.csv)")
        if self.init_args is not None and not isinstance(self.init_args, dict):
            raise ConfigError(f"init_args must be a mapping, got {self.init_args!r}")


def fit_generator(cfg: FitConfig) -> Path:
    """Check everything cheap first (class, init_args, data), then fit; writes `fit_info.json` (resolved
    config, seed, versions, checkpoint) into `output_dir` and returns the checkpoint folder."""
    import json
    import time
    from dataclasses import asdict

    from defectfill.data.datasets import load_reference_dataset  # lazy: generation imports this registry
    from defectfill.errors import check_writable, output_errors
    from defectfill.runinfo import atomic_write_text, package_versions

    cfg.validate()
    cls = import_class(cfg.class_path)
    cls.check_init_args(cfg.init_args)
    check_writable(cfg.output_dir, "output folder")
    dataset = load_reference_dataset(cfg.data_dir)
    generator = cls.from_init_args(dict(cfg.init_args or {}))
    with output_errors(cfg.output_dir):
        checkpoint = Path(generator.fit(dataset, cfg.output_dir, cfg.seed))
        record = {"config": asdict(cfg), "seed": cfg.seed, "generator_class": f"{cls.__module__}:{cls.__name__}",
                  "checkpoint": str(checkpoint), "versions": package_versions(),
                  "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(Path(cfg.output_dir) / "fit_info.json", json.dumps(record, indent=2, default=str))
    return checkpoint
