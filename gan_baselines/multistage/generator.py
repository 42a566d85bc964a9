"""The Multistage GAN behind the shared `Generator` interface: `MultistageGANGenerator` (fit through
`train`, load a run's `final/` with its style encoder, synthesize one defect per clean image and mask)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from defectfill.errors import ConfigError
from defectfill.generation.compositing import windowed
from defectfill.generation.run import file_sha256
from defectfill.generators import Generator
from defectfill.training_utils import load_module_state
from gan_baselines.harness import config_from_init_args, fit_config, read_final, to_channels
from gan_baselines.multistage.model import STYLE_ENCODER_NAME, StyleEncoder, build_generators, synthesize_windows
from gan_baselines.multistage.train import NAME, MultistageConfig, train


class MultistageGANGenerator(Generator):
    """A trained Multistage GAN: `synthesize(clean, mask, seed)` cuts a window around the mask
    (`windowed`), takes the clean window's Gram style, draws z from `seed`, generates a defect
    patch (G1), pastes it at the mask's bounding box, fuses it (T) and composites the result, so
    pixels farther than `dilation` from the mask stay bit-identical to `clean`."""

    name = NAME
    preserves_background = True

    def __init__(self, cfg, channels: int, g1: nn.Module, t: nn.Module, encoder: StyleEncoder,
                 device: torch.device | str = "cpu", source: str | None = None, dilation: int | None = None):
        self.cfg, self.channels, self.source = cfg, channels, source
        self.device = torch.device(device)
        self.g1, self.t = g1.to(self.device).eval(), t.to(self.device).eval()
        self.encoder = encoder.to(self.device)
        self.dilation = cfg.dilation if dilation is None else int(dilation)

    @classmethod
    def from_init_args(cls, init_args: dict | None = None) -> MultistageGANGenerator:
        """Unfitted: MultistageConfig keys, inline (e.g. configs/generators/multistage.yaml's init_args)."""
        self = cls.__new__(cls)
        self.cfg = config_from_init_args(MultistageConfig, init_args, "multistage")
        return self

    def fit(self, dataset, output_dir: str | os.PathLike, seed: int = 0) -> Path:
        """Train both stages on `dataset` (`train`); returns `<output_dir>/final`."""
        return train(fit_config(self.cfg, dataset, output_dir, seed))

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | None, device="cpu", dilation: int | None = None,
                        **kwargs) -> MultistageGANGenerator:
        """Load `<run>/final` (config.yaml, weights.safetensors, style_encoder.safetensors)."""
        if checkpoint is None:
            raise ConfigError("the multistage generator needs checkpoint: a Multistage GAN run's final folder")
        if kwargs:
            raise ConfigError(f"multistage: unknown generator_args {', '.join(sorted(kwargs))} (known: dilation)")
        folder = Path(checkpoint)
        if not (folder / "config.yaml").is_file() and (folder / "final" / "config.yaml").is_file():
            folder = folder / "final"  # the run folder was given
        config, weights = read_final(folder)
        if config.get("baseline") != cls.name or "channels" not in config:
            raise ConfigError(f"{folder / 'config.yaml'}: not a Multistage GAN run (baseline "
                              f"{config.get('baseline')!r})")
        fields = set(MultistageConfig.__dataclass_fields__)
        cfg = MultistageConfig(**{k: v for k, v in config.items() if k in fields})
        encoder = StyleEncoder.load(folder / STYLE_ENCODER_NAME)
        channels = int(config["channels"])
        nets = build_generators(cfg, encoder.layer_channels, channels)
        load_module_state(nets, {k: v for k, v in weights.items() if k.split(".")[0] in nets},
                          folder / "weights.safetensors")
        return cls(cfg, channels, nets["G1"], nets["T"], encoder, device=device, source=str(folder),
                   dilation=dilation)

    def metadata(self) -> dict:
        about = {"generator": self.name, "style_encoder": self.encoder.description, "dilation": self.dilation,
                 "patch_size": self.cfg.patch_size, "resolution": self.cfg.resolution,
                 "crop_size": self.cfg.crop_size, "loss": self.cfg.loss}
        if self.source:
            about.update(checkpoint=self.source, weights_hash=file_sha256(Path(self.source) / "weights.safetensors"))
        return about

    @torch.no_grad()
    def fuse_window(self, window_r: np.ndarray, mask_r: np.ndarray, z: torch.Tensor) -> np.ndarray:
        """One window (R, R, 3) uint8 + mask (R, R) → the fused window (R, R, 3) uint8."""
        img = torch.from_numpy(np.array(window_r)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        m = torch.from_numpy(mask_r.astype(np.float32))[None, None].to(self.device)
        background = to_channels(img, self.channels).to(self.device)
        _, fused = synthesize_windows(self.g1, self.t, self.encoder, background, m, z.to(self.device))
        rgb = ((fused[0].float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().expand(3, -1, -1)
        return np.ascontiguousarray(rgb.permute(1, 2, 0).numpy())

    def synthesize(self, clean: np.ndarray, mask: np.ndarray, seed: int,
                   defect_class: str | None = None, placement=None) -> tuple[np.ndarray, dict]:
        z = torch.randn(1, self.cfg.z_dim, generator=torch.Generator().manual_seed(int(seed) % 2**63))
        result, window = windowed(clean, mask, self.cfg.crop_size, self.cfg.resolution, self.dilation,
                                  lambda w, m: self.fuse_window(w, m, z))
        return result, {"window_yxhw": list(window)}
