"""DGT: defect generation and transfer ("Open-Set Fabric Defect Detection With Defect Generation
and Transfer", IEEE TIM 2025) as a GAN baseline: codes + stochastic Gaussian smoothing + a U-Net
generator and PatchGAN discriminator (model.py), trained with region L1 and adversarial losses
jointly with DGT's downstream modules DIS (`defectfill.downstream.dis`) and DFC
(`defectfill.downstream.openset`), whose losses on the generated images also train G (train.py);
`DGTGenerator` (generator.py) is the `Generator` adapter.

Train with `python train/train_dgt.py --config configs/generators/dgt.yaml` or
`defectfill fit --config configs/generators/dgt.yaml --data <folder> --output-dir <run>`; generate
with `GenerateConfig(generator="dgt", checkpoint="<run>/final", ...)`.
"""

from gan_baselines.dgt.generator import DGTGenerator
from gan_baselines.dgt.train import DGTConfig, train

__all__ = ["DGTConfig", "DGTGenerator", "train"]
