"""``defectfill pretrain-base``: train a small SD-style inpainting base from scratch on clean fabric.

    defectfill pretrain-base --config configs/base/fabric_cpu.yaml --data-dir ../shared/data/aitex --output-dir runs/fabric-base
    accelerate launch -m defectfill pretrain-base --config configs/base/fabric_gpu.yaml --data-dir DIR --output-dir DIR

Rerun the same command to resume from the last checkpoint in <output-dir>/training/.
"""

from __future__ import annotations

import argparse

from defectfill.cli import flags


def add_parser(sub) -> None:
    p = sub.add_parser("pretrain-base", help="train a small SD-style inpainting base from scratch on clean fabric",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML of PretrainBaseConfig keys (configs/base/fabric_cpu.yaml)")
    flags.data_dir(p, help="reference data folder (good/ and images/ + masks/)")
    flags.output_dir(p, help="folder for the diffusers pipeline (training/ inside holds checkpoints)")
    p.add_argument("--overwrite", action="store_true", help="train again over a finished base in --output-dir")
    p.add_argument("--no-card", action="store_true", help="skip the model card measurements")
    flags.overrides(p)
    flags.renamed(p, "--data", "--data-dir")
    flags.renamed(p, "--output", "--output-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from defectfill.config import load_config
    from defectfill.diffusion.base.train import PretrainBaseConfig, pretrain_base

    cfg = load_config(PretrainBaseConfig, args.config, args.overrides, data_dir=args.data_dir,
                      output_dir=args.output_dir)
    out = pretrain_base(cfg, overwrite=args.overwrite)
    if not args.no_card:
        from defectfill.diffusion.base.card import write_model_card

        command = " ".join(["defectfill pretrain-base"] + [f"--{k} {v}" for k, v in
                                                           (("config", args.config), ("data-dir", args.data_dir),
                                                            ("output-dir", args.output_dir)) if v]
                           + [f"--set {o}" for o in args.overrides])
        card = write_model_card(out, cfg, command=command)
        print(f"model card: {card}")
    print(f"base model: {out}")
