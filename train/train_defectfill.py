"""Fine-tune DefectFill (SD-2 inpainting + LoRA + [V*] token) on reference defects.

    python train/train_defectfill.py --config configs/defectfill/tiny.yaml
    accelerate launch train/train_defectfill.py --config configs/defectfill/sd2_lora.yaml

The same as ``defectfill train`` (and ``accelerate launch -m defectfill train``): this file is a shim over
:mod:`defectfill.cli.train`, flags included (``--data_dir`` / ``--output_dir`` / ``--resume_from_checkpoint``
as diffusers spells them, or ``--data-dir`` / ``--output-dir`` / ``--resume-from-checkpoint``).
"""

from __future__ import annotations

import argparse
import sys

from defectfill.cli import main as cli_main
from defectfill.cli import train as train_verb
from defectfill.errors import one_line_errors


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_verb.add_arguments(parser)
    return parser.parse_args(input_args)


@one_line_errors
def main(args: argparse.Namespace) -> int:
    train_verb.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main(["train", *sys.argv[1:]]))
