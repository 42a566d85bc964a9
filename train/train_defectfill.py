"""Fine-tune DefectFill (SD-2 inpainting + LoRA + [V*] token) on reference defects.

    python train/train_defectfill.py --config configs/defectfill/tiny.yaml
    accelerate launch train/train_defectfill.py --config configs/defectfill/sd2_lora.yaml
"""

from __future__ import annotations

import argparse
import sys

from defectfill.config import load_config
from defectfill.diffusion.config import DefectFillTrainConfig
from defectfill.errors import one_line_errors


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (configs/defectfill/*.yaml)")
    parser.add_argument("--model", help="base inpainting model: hub id or local folder")
    parser.add_argument("--data_dir", help="reference data folder (images/, masks/)")
    parser.add_argument("--output_dir", help="run folder for checkpoints, logs and the final LoRA")
    parser.add_argument("--max_train_steps", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run already in output_dir (its checkpoints, logs and LoRA are removed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (repeatable)")
    return parser.parse_args(input_args)


@one_line_errors
def main(args: argparse.Namespace) -> int:
    from defectfill.diffusion.trainer import train

    cfg = load_config(DefectFillTrainConfig, args.config, args.overrides, model=args.model,
                      data_dir=args.data_dir, output_dir=args.output_dir,
                      max_train_steps=args.max_train_steps, seed=args.seed,
                      overwrite=True if args.overwrite else None)
    lora_dir = train(cfg, resume_from_checkpoint=args.resume_from_checkpoint)
    print(f"LoRA weights: {lora_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
