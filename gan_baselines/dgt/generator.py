"""DGT behind the shared `Generator` interface: `DGTGenerator` (fit through `train`, load a run's
`final/`, synthesize one defect per clean image and mask)."""

from __future__ import annotations

from pathlib import Path

import torch

from gan_baselines.dgt.model import UNetGenerator, defect_free_input
from gan_baselines.dgt.train import DGTConfig, build_networks, run_generator, train
from gan_baselines.generator import ConditionalGANGenerator


class DGTGenerator(ConditionalGANGenerator):
    """A DGT generator behind the shared `Generator` interface.

    Unfitted (`from_init_args`): holds a `DGTConfig`; `fit(dataset, output_dir, seed)` trains it
    (G with D, DIS and DFC) and loads the trained G. Fitted (`from_checkpoint`, or after `fit`):
    `synthesize(clean, mask, seed, defect_class)` cuts a window around the mask (`windowed`),
    re-fills the mask region like in training, builds the class's codes, smooths them with draws
    from `seed`, runs G and composites the result, so pixels farther than `dilation` from the
    mask stay bit-identical to `clean`.
    """

    name = "dgt"
    config_cls = DGTConfig

    @classmethod
    def run_training(cls, cfg: DGTConfig, dataset) -> Path:
        """`train` (G with D, DIS and DFC) on `cfg.data_dir` (= the dataset's folder, filtered by the
        config's defect_types / max_samples)."""
        return train(cfg)

    @classmethod
    def build_g(cls, cfg: DGTConfig, num_classes: int, channels: int) -> UNetGenerator:
        return build_networks(cfg, num_classes, channels)[0]

    def generate_window(self, window: torch.Tensor, mask: torch.Tensor, label: int,
                        generator: torch.Generator) -> torch.Tensor:
        """The mask region re-filled like in training, the class's smoothed codes (draws from
        `generator`), then G."""
        background = defect_free_input(window, mask, self.cfg.input_fill)
        return run_generator(self.g, background.to(self.device), mask.to(self.device), torch.tensor([label]),
                             len(self.classes), self.cfg, generator)
