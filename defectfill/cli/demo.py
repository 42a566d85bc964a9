"""``defectfill demo``: the embedded default, DefectFill fine-tuned on the embedded fabric base."""

from __future__ import annotations

import argparse

from defectfill.cli import flags


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the embedded default: DefectFill fine-tuned on the embedded fabric base")
    flags.output_dir(p, default="runs/demo")
    flags.data_dir(p, default=None, help="reference data (default: ../shared/data/aitex if present)")
    p.add_argument("--steps", type=int, default=None, help="fine-tune steps (default: configs/defectfill/fabric_base.yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from defectfill.demo import run_demo

    run_demo(args.output_dir, data_dir=args.data_dir, steps=args.steps)
