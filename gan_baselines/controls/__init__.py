"""Realism-free control generators (no learning): `shade` and `noise_blob`, in generator.py."""

from gan_baselines.controls.generator import (
    ControlConfig,
    NoiseBlobConfig,
    NoiseBlobGenerator,
    ShadeGenerator,
)

__all__ = ["ControlConfig", "NoiseBlobConfig", "NoiseBlobGenerator", "ShadeGenerator"]
