"""Pretrain a small fabric inpainting base from scratch (the `defectfill pretrain-base` command).

    python train/pretrain_base.py --config configs/base/fabric_cpu.yaml --data ../shared/data/aitex --output runs/fabric-base
    accelerate launch train/pretrain_base.py --config configs/base/fabric_gpu.yaml --data DIR --output DIR

Rerun the same command to resume from the last checkpoint in <output>/training/.
"""

from __future__ import annotations

import sys

from defectfill.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain-base", *sys.argv[1:]]))
