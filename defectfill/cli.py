"""The `defectfill` command line."""

from __future__ import annotations

import argparse
import sys

from defectfill.errors import DefectfillError


def _make_tiny_model(args: argparse.Namespace) -> None:
    from defectfill.models.tiny import make_tiny_pipeline

    print(f"tiny inpainting pipeline: {make_tiny_pipeline(args.directory)}")


def _make_procedural_data(args: argparse.Namespace) -> None:
    from defectfill.data.procedural import make_woven_dataset

    print(f"procedural woven dataset: {make_woven_dataset(args.directory, seed=args.seed)}")


def _train(args: argparse.Namespace) -> None:
    from defectfill.config import DefectFillTrainConfig, load_config
    from defectfill.trainer import train

    cfg = load_config(DefectFillTrainConfig, args.config, args.overrides)
    print(f"LoRA weights: {train(cfg, resume_from_checkpoint=args.resume_from_checkpoint)}")


def _demo(args: argparse.Namespace) -> None:
    from defectfill.demo import run_demo

    run_demo(args.output_dir, data_dir=args.data_dir, steps=args.steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defectfill", description="Realistic defect images for visual inspection.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-tiny-model", help="write a tiny random SD-2 inpainting pipeline (for tests / CPU demo)")
    p.add_argument("directory")
    p.set_defaults(func=_make_tiny_model)

    p = sub.add_parser("make-procedural-data", help="write a small procedural woven-fabric reference dataset")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_procedural_data)

    p = sub.add_parser("train", help="fine-tune DefectFill (same as train/train_defectfill.py)")
    p.add_argument("--config", required=True)
    p.add_argument("--resume_from_checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_train)

    p = sub.add_parser("demo", help="the embedded default: tiny model, short fine-tune on reference defects")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--data-dir", default=None, help="reference data (default: ../shared/data/aitex if present)")
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DefectfillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
