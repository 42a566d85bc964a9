"""Train the R3GAN baseline (one R3GAN-style generator, RpGAN + R1 + R2 only) on reference defects.

    python train/train_r3gan.py --config configs/generators/r3gan.yaml --output_dir /tmp/r3gan_small
    accelerate launch train/train_r3gan.py --config configs/generators/r3gan.yaml --set g_blocks=2
"""

from __future__ import annotations

import argparse
import sys

from gan_baselines.harness import gan_arg_parser, run_training
from gan_baselines.r3gan.train import R3GANConfig, train


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    return gan_arg_parser(__doc__).parse_args(input_args)


def main(args: argparse.Namespace) -> int:
    return run_training(args, R3GANConfig, train, "R3GAN", "r3gan")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
