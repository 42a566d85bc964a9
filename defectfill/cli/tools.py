"""``defectfill make-tiny-model`` and ``defectfill make-procedural-data``: small fixtures for tests and the CPU demo."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("make-tiny-model", help="write a tiny random SD-2 inpainting pipeline (for tests / CPU demo)")
    p.add_argument("directory")
    p.set_defaults(func=make_tiny_model)

    p = sub.add_parser("make-procedural-data", help="write a small procedural woven-fabric reference dataset")
    p.add_argument("directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_procedural_data)


def make_tiny_model(args: argparse.Namespace) -> None:
    from defectfill.diffusion.models.tiny import make_tiny_pipeline

    print(f"tiny inpainting pipeline: {make_tiny_pipeline(args.directory)}")


def make_procedural_data(args: argparse.Namespace) -> None:
    from defectfill.data.procedural import make_woven_dataset

    print(f"procedural woven dataset: {make_woven_dataset(args.directory, seed=args.seed)}")
