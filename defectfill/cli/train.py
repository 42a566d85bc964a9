"""``defectfill train``: fine-tune DefectFill (SD-2 inpainting + LoRA + [V*] token) on reference defects.

``train/train_defectfill.py`` (for ``accelerate launch``) is a shim over this module.
"""

from __future__ import annotations

import argparse

from defectfill.cli import flags


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file (configs/defectfill/*.yaml)")
    p.add_argument("--model", help="base inpainting model: hub id or local folder")
    flags.data_dir(p, help="reference data folder (images/, masks/)")
    flags.output_dir(p, help="run folder for checkpoints, logs and the final LoRA")
    p.add_argument("--max_train_steps", "--max-train-steps", dest="max_train_steps", type=int)
    p.add_argument("--seed", type=int)
    flags.resume(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in output_dir (its checkpoints, logs and LoRA are removed)")
    flags.overrides(p, help="override any config key (repeatable)")


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune DefectFill (same as train/train_defectfill.py)",
                       description=__doc__.splitlines()[0].split(": ", 1)[1])
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from defectfill.config import load_config
    from defectfill.diffusion.config import DefectFillTrainConfig
    from defectfill.diffusion.trainer import train

    cfg = load_config(DefectFillTrainConfig, args.config, args.overrides, model=args.model,
                      data_dir=args.data_dir, output_dir=args.output_dir,
                      max_train_steps=args.max_train_steps, seed=args.seed,
                      overwrite=True if args.overwrite else None)
    print(f"LoRA weights: {train(cfg, resume_from_checkpoint=args.resume_from_checkpoint)}")
