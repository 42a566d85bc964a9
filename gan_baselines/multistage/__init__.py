"""Multistage GAN (J. Liu, C. Wang, H. Su, B. Du, D. Tao, "Multistage GAN for Fabric Defect
Detection", IEEE TIP 2020) as a GAN baseline: a texture-conditioned defect GAN (stage 1: G1(z,
Gram style of a defect-free patch) → defect patch) and a defect-fusing network (stage 2: T pastes
the patch into the mask of a clean window and makes it seamless).

Train with `python train/train_multistage_gan.py --config configs/gan/multistage_small.yaml`;
generate with `GenerateConfig(generator="multistage", checkpoint="<run>/final", ...)`.
"""

from gan_baselines.multistage.model import (
    DefectPatchGenerator,
    FusionUNet,
    MultistageGANGenerator,
    PatchDiscriminator,
    StyleEncoder,
    StyleProjection,
    WindowDiscriminator,
    crop_patches,
    gram_matrix,
    paste_patches,
    upper_triangle,
)
from gan_baselines.multistage.train import MultistageConfig, train

__all__ = [
    "DefectPatchGenerator",
    "FusionUNet",
    "MultistageConfig",
    "MultistageGANGenerator",
    "PatchDiscriminator",
    "StyleEncoder",
    "StyleProjection",
    "WindowDiscriminator",
    "crop_patches",
    "gram_matrix",
    "paste_patches",
    "train",
    "upper_triangle",
]
