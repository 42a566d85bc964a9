"""Train and evaluate an RT-DETR defect detector on tiled reference data (+ optional synthetic data).

    python train/finetune_rtdetr.py --reference ../shared/data/aitex --output_dir runs/det/real
    python train/finetune_rtdetr.py --reference ../shared/data/aitex --synthetic runs/generated \\
        --output_dir runs/det/real+syn --set epochs=100
    python train/finetune_rtdetr.py --reference DEV --eval_reference HOLDOUT --output_dir runs/det/x

Writes under --output_dir: dataset/ (and eval_dataset/), <name>/weights/best.pt (ultralytics'
format), results.json and results.md. Fully offline (ultralytics is kept offline by
defectfill.detect.offline); the model is configs/rtdetr/rtdetr_lite0.yaml (pretrained EfficientNet-Lite0) unless --model names
another YAML or a LOCAL .pt file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from defectfill.config import load_config
from defectfill.errors import one_line_errors


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="reference folder (images/, masks/, good/)")
    parser.add_argument("--synthetic", action="append", default=[], help="synthetic dataset (train only; repeatable)")
    parser.add_argument("--eval_reference", help="held-out reference folder evaluated after training")
    parser.add_argument("--config", help="YAML with DetectorConfig keys")
    parser.add_argument("--output_dir", help="run folder (default: the config's output_dir)")
    parser.add_argument("--model", help="detector YAML or LOCAL .pt")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--device")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any DetectorConfig key (repeatable)")
    return parser.parse_args(input_args)


@one_line_errors
def main(args: argparse.Namespace) -> int:
    from defectfill.detect.dataset import build_detection_dataset, build_eval_dataset
    from defectfill.detect.report import write_report
    from defectfill.detect.rtdetr import DetectorConfig, evaluate_detector, train_detector
    from defectfill.runinfo import package_versions

    cfg = load_config(DetectorConfig, args.config, args.overrides, output_dir=args.output_dir,
                      model=args.model, epochs=args.epochs, device=args.device, seed=args.seed)
    out = Path(cfg.output_dir).expanduser().resolve()
    t0 = time.perf_counter()
    manifest = build_detection_dataset(args.reference, out / "dataset", synthetic_dirs=args.synthetic,
                                       **cfg.dataset_kwargs())
    datasets = {"val": out / "dataset" / "data.yaml"}
    if args.eval_reference:
        kwargs = {k: v for k, v in cfg.dataset_kwargs().items() if k not in ("val_fraction", "seed")}
        build_eval_dataset(args.eval_reference, out / "eval_dataset",
                           **{**kwargs, "class_names": manifest["class_names"]})
        datasets["eval"] = out / "eval_dataset" / "data.yaml"
    t1 = time.perf_counter()
    weights = train_detector(cfg, datasets["val"])
    t2 = time.perf_counter()
    evaluations = {label: evaluate_detector(weights, path, "val", batch=cfg.batch, device=cfg.device,
                                            conf=cfg.conf, workers=cfg.workers, config_dir=cfg.yolo_config_dir)
                   for label, path in datasets.items()}
    t3 = time.perf_counter()
    results = {"config": dataclasses.asdict(cfg), "reference": str(Path(args.reference).resolve()),
               "synthetic": [str(Path(s).resolve()) for s in args.synthetic],
               "eval_reference": str(Path(args.eval_reference).resolve()) if args.eval_reference else None,
               "weights": str(weights), "dataset": {k: v for k, v in manifest.items() if k != "tiles"},
               "evaluations": evaluations,
               "seconds": {"dataset": round(t1 - t0, 2), "train": round(t2 - t1, 2), "evaluate": round(t3 - t2, 2)},
               "versions": package_versions()}
    json_path, md_path = write_report(results, out, "results")
    print(f"weights: {weights}\nresults: {json_path}  {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
