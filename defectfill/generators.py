"""The one generator interface shared by DefectFill and every baseline.

A generator is fitted once on reference defects (`fit`), then turns a clean image, a mask and a
seed into a defect image (`synthesize`). `run_generation` (defectfill.generate) plans slots,
resumes, shards across processes and writes every generator's output with the same
`SampleWriter`, so all of them produce the same dataset format. The benchmark names generators
by class path (`package.module:Class`), so `defectfill` never imports `gan_baselines`.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectfill.errors import ConfigError

ALIASES = {
    "defectfill": "defectfill.generate:DefectFillSynthesizer",
    "copy_paste": "gan_baselines.copy_paste:CopyPasteGenerator",
    "multistage": "gan_baselines.multistage:MultistageGANGenerator",
    "dgt": "gan_baselines.dgt:DGTGenerator",
}


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
    dilation = 0

    @classmethod
    def check(cls, cfg) -> None:
        """Cheap checks of a `GenerateConfig` for this generator (files, configs; no weights), run
        before any heavy work; raise a DefectfillError naming the file. Default: none."""

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", **kwargs) -> "Generator":
        """Load a fitted generator from the folder its `fit` wrote."""
        raise NotImplementedError(f"{cls.__name__} cannot be loaded from a checkpoint")

    def fit(self, dataset, output_dir: str | os.PathLike) -> Path:
        """Train on a `ReferenceDataset`; write weights (safetensors) + config to `output_dir`."""
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
        from defectfill.samples import Sample

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
    """The generator a `GenerateConfig` names, loaded on `device`."""
    cls = import_class(cfg.generator)
    if cls.__name__ == "DefectFillSynthesizer":
        return cls(cfg, device=device)
    args = {"dilation": cfg.dilation, **(cfg.generator_args or {})}  # one background-fidelity band for all
    return cls.from_checkpoint(cfg.checkpoint, device=device, **args)
