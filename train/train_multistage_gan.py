"""Train the Multistage GAN baseline (Liu et al., IEEE TIP 2020) on reference defects.

    python train/train_multistage_gan.py --config configs/generators/multistage.yaml
    accelerate launch train/train_multistage_gan.py --config configs/generators/multistage.yaml
"""

from __future__ import annotations

import argparse
import sys

from gan_baselines.harness import gan_arg_parser, run_training
from gan_baselines.multistage.train import MultistageConfig, train


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    return gan_arg_parser(__doc__).parse_args(input_args)


def main(args: argparse.Namespace) -> int:
    return run_training(args, MultistageConfig, train, "Multistage GAN", "multistage")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
