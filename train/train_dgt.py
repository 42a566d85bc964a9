"""Train the DGT baseline (defect generation and transfer) on reference defects.

    python train/train_dgt.py --config configs/generators/dgt.yaml --output_dir /tmp/dgt_small
    accelerate launch train/train_dgt.py --config configs/generators/dgt.yaml --set loss=r3gan
"""

from __future__ import annotations

import argparse
import sys

from gan_baselines.dgt.train import DGTConfig, train
from gan_baselines.harness import gan_arg_parser, run_training


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    return gan_arg_parser(__doc__).parse_args(input_args)


def main(args: argparse.Namespace) -> int:
    return run_training(args, DGTConfig, train, "DGT", "dgt")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
