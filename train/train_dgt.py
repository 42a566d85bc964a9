"""Train the DGT baseline (defect generation and transfer) on reference defects.

    python train/train_dgt.py --config configs/gan/dgt_small.yaml --output_dir /tmp/dgt_small
    accelerate launch train/train_dgt.py --config configs/gan/dgt_small.yaml --set loss=r3gan
"""

from __future__ import annotations

import argparse
import sys

from defectfill.config import load_config
from defectfill.errors import DefectfillError


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (configs/gan/dgt_*.yaml)")
    parser.add_argument("--data_dir", help="reference data folder (images/, masks/, good/)")
    parser.add_argument("--output_dir", help="run folder for checkpoints, logs, samples and final/")
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")
    return parser.parse_args(input_args)


def main(args: argparse.Namespace) -> int:
    from gan_baselines.dgt.train import DGTConfig, train

    try:
        cfg = load_config(DGTConfig, args.config, args.overrides, data_dir=args.data_dir,
                          output_dir=args.output_dir, max_steps=args.max_steps)
        final = train(cfg, resume_from_checkpoint=args.resume_from_checkpoint)
    except DefectfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"DGT weights: {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
