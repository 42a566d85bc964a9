"""DGT: defect generation and transfer ("Open-Set Fabric Defect Detection With Defect Generation
and Transfer", IEEE TIM 2025) as a GAN baseline: codes + stochastic Gaussian smoothing + a U-Net
generator and PatchGAN discriminator, trained with region L1 and adversarial losses.

Train with `python train/train_dgt.py --config configs/gan/dgt_small.yaml`; generate with
`GenerateConfig(generator="dgt", checkpoint="<run>/final", ...)`.
"""

from gan_baselines.dgt.model import (
    PatchDiscriminator,
    UNetGenerator,
    background_code,
    background_l1,
    blend_l1,
    boundary_band,
    defect_free_input,
    fill_region,
    foreground_code,
    foreground_l1,
    stochastic_gaussian_smoothing,
)
from gan_baselines.dgt.train import DGTConfig, DGTGenerator, train

__all__ = [
    "DGTConfig",
    "DGTGenerator",
    "PatchDiscriminator",
    "UNetGenerator",
    "background_code",
    "background_l1",
    "blend_l1",
    "boundary_band",
    "defect_free_input",
    "fill_region",
    "foreground_code",
    "foreground_l1",
    "stochastic_gaussian_smoothing",
    "train",
]
