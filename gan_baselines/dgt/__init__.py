"""DGT: defect generation and transfer ("Open-Set Fabric Defect Detection With Defect Generation
and Transfer", IEEE TIM 2025) as a GAN baseline: codes + stochastic Gaussian smoothing + a U-Net
generator and PatchGAN discriminator, trained with region L1 and adversarial losses, jointly with
DGT's downstream modules DIS (defect segmentation U-Net, `defectfill.downstream.dis`) and DFC
(open-set defect classifier, `defectfill.downstream.openset`), whose losses on the generated
images also train G (`lambda_dis`, `lambda_dfc`).

Train with `python train/train_dgt.py --config configs/gan/dgt_small.yaml` or through the generator
interface, `DGTGenerator.from_init_args({"config": ..., **overrides}).fit(dataset, output_dir, seed)`;
generate with `GenerateConfig(generator="dgt", checkpoint="<run>/final", ...)`.
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
from gan_baselines.dgt.train import (
    DGTConfig,
    DGTGenerator,
    build_downstream,
    downstream_g_loss,
    downstream_terms,
    load_downstream,
    train,
)

__all__ = [
    "DGTConfig",
    "DGTGenerator",
    "PatchDiscriminator",
    "UNetGenerator",
    "background_code",
    "background_l1",
    "blend_l1",
    "boundary_band",
    "build_downstream",
    "defect_free_input",
    "downstream_g_loss",
    "downstream_terms",
    "fill_region",
    "foreground_code",
    "foreground_l1",
    "load_downstream",
    "stochastic_gaussian_smoothing",
    "train",
]
