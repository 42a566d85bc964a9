"""Multistage GAN (J. Liu, C. Wang, H. Su, B. Du, D. Tao, "Multistage GAN for Fabric Defect
Detection", IEEE TIP 2020) as a GAN baseline: a texture-conditioned defect GAN (stage 1: G1(z,
Gram style of a defect-free patch) → defect patch) and a defect-fusing network (stage 2: T pastes
the patch into the mask of a clean window and makes it seamless). Networks: model.py; training:
train.py; the `Generator` adapter `MultistageGANGenerator`: generator.py.

Train with `python train/train_multistage_gan.py --config configs/generators/multistage.yaml` or
`defectfill fit --config configs/generators/multistage.yaml --data <folder> --output-dir <run>`;
generate with `GenerateConfig(generator="multistage", checkpoint="<run>/final", ...)`.
"""

from gan_baselines.multistage.generator import MultistageGANGenerator
from gan_baselines.multistage.train import MultistageConfig, train

__all__ = ["MultistageConfig", "MultistageGANGenerator", "train"]
