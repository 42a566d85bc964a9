"""R3GAN behind the shared `Generator` interface: `R3GANGenerator` (fit through `train`, load a run's
`final/`, synthesize one defect per clean image and mask)."""

from __future__ import annotations

from pathlib import Path

import torch

from gan_baselines.generator import ConditionalGANGenerator
from gan_baselines.r3gan.model import R3GANUNet
from gan_baselines.r3gan.train import R3GANConfig, build_networks, fill_masked, train


class R3GANGenerator(ConditionalGANGenerator):
    """The R3GAN baseline behind the shared `Generator` interface.

    Unfitted (`from_init_args`) it holds a config; `fit` trains it; `from_checkpoint` loads a
    run's `final/` folder. `synthesize(clean, mask, seed, defect_class)` cuts a window around the
    mask (`windowed`), runs G on it with noise drawn from `seed`, composites G's output inside the
    mask and the window into `clean`, so pixels farther than `dilation` from the mask stay
    bit-identical to `clean`.
    """

    name = "r3gan"
    config_cls = R3GANConfig

    @classmethod
    def run_training(cls, cfg: R3GANConfig, dataset) -> Path:
        """`train` on `dataset` as given (the config's defect_types / max_samples do not filter it)."""
        return train(cfg, dataset=dataset)

    @classmethod
    def build_g(cls, cfg: R3GANConfig, num_classes: int, channels: int) -> R3GANUNet:
        return build_networks(cfg, num_classes, channels)[0]

    def generate_window(self, window: torch.Tensor, mask: torch.Tensor, label: int,
                        generator: torch.Generator) -> torch.Tensor:
        """clean·(1 − m) + G·m on the window (noise from `generator`)."""
        return fill_masked(self.g, window.to(self.device), mask.to(self.device),
                           torch.tensor([label], device=self.device), generator, self.cfg.noise_channels)
