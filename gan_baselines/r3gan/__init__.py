"""R3GAN baseline (Huang, Gokaslan, Kuleshov, Tompkin, "The GAN is dead; long live the GAN! A Modern
GAN Baseline", NeurIPS 2024) as a single-stage defect generator: an R3GAN-style encoder-decoder G
(clean crop + mask + noise + class → defect inside the mask) and a projection-conditioned D
(model.py), trained with RpGAN + R1 + R2 only, no reconstruction term, no fusion network (train.py);
`R3GANGenerator` (generator.py) is the `Generator` adapter.

Train with `python train/train_r3gan.py --config configs/generators/r3gan.yaml` or
`defectfill fit --config configs/generators/r3gan.yaml --data <folder> --output-dir <run>`; generate
with `GenerateConfig(generator="r3gan", checkpoint="<run>/final", ...)`.
"""

from gan_baselines.r3gan.generator import R3GANGenerator
from gan_baselines.r3gan.train import R3GANConfig, train

__all__ = ["R3GANConfig", "R3GANGenerator", "train"]
