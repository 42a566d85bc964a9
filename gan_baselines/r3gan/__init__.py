"""R3GAN baseline (Huang, Gokaslan, Kuleshov, Tompkin, "The GAN is dead; long live the GAN! A Modern
GAN Baseline", NeurIPS 2024) as a single-stage defect generator: an R3GAN-style encoder-decoder G
(clean crop + mask + noise + class → defect inside the mask) and a projection-conditioned D,
trained with RpGAN + R1 + R2 only (no reconstruction term, no fusion network).

Train with `python train/train_r3gan.py --config configs/gan/r3gan_small.yaml`; generate with
`GenerateConfig(generator="r3gan", checkpoint="<run>/final", ...)`.
"""

from gan_baselines.r3gan.networks import (
    BiasedActivation,
    ProjectionDiscriminator,
    R3GANUNet,
    ResidualBlock,
    lowpass_downsample,
    lowpass_kernel,
    lowpass_upsample,
    residual_blocks,
)
from gan_baselines.r3gan.train import R3GANConfig, R3GANGenerator, build_networks, fill_masked, train, train_step

__all__ = [
    "BiasedActivation",
    "ProjectionDiscriminator",
    "R3GANConfig",
    "R3GANGenerator",
    "R3GANUNet",
    "ResidualBlock",
    "build_networks",
    "fill_masked",
    "lowpass_downsample",
    "lowpass_kernel",
    "lowpass_upsample",
    "residual_blocks",
    "train",
    "train_step",
]
