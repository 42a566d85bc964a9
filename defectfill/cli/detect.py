"""RT-DETR on real (+ synthetic) data, offline ultralytics: `defectfill detect build | train | eval`.

    defectfill detect build --data-dir ../shared/data/aitex --output-dir runs/det/dataset [--synthetic DIR]
    defectfill detect train --data-yaml runs/det/dataset/data.yaml --output-dir runs/det [--config YAML] [--set epochs=50]
    defectfill detect eval  --data-yaml DIR/data.yaml --weights runs/det/rtdetr/weights/best.pt

A held-out folder: ``detect build --eval --class-names <the training set's> --data-dir HOLDOUT``, then
``detect eval`` on its data.yaml. The library: :mod:`defectfill.detect.rtdetr` and
:mod:`defectfill.detect.dataset`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import yaml

from defectfill.cli import flags
from defectfill.errors import ConfigError, ModelError, check_writable, output_errors


def _load_cfg(args: argparse.Namespace, **explicit):
    from defectfill.config import load_config
    from defectfill.detect.rtdetr import DetectorConfig

    return load_config(DetectorConfig, args.config, args.overrides, **explicit)


def _sets_key(args: argparse.Namespace, key: str) -> bool:
    """Whether ``--config`` or a ``--set`` names ``key`` (rather than leaving it at its default)."""
    if any(o.partition("=")[0].strip() == key for o in args.overrides):
        return True
    if args.config:
        values = yaml.safe_load(Path(args.config).read_text()) or {}
        return isinstance(values, dict) and key in values
    return False


def build(args: argparse.Namespace) -> None:
    from defectfill.detect.dataset import build_detection_dataset, build_eval_dataset

    cfg = _load_cfg(args)
    names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
    if names is not None:
        if cfg.single_class and _sets_key(args, "single_class"):
            raise ConfigError(f"--class-names {','.join(names)} and single_class: true conflict (one class "
                              f"'defect'); drop one, or set single_class=false")
        cfg.single_class = False  # class names mean one class per defect type
    check_writable(args.output_dir, "dataset folder")
    kwargs = cfg.dataset_kwargs()
    if args.eval:
        kwargs.pop("val_fraction")
        kwargs.pop("seed")
        manifest = build_eval_dataset(args.data_dir, args.output_dir, class_names=names, **kwargs)
    else:
        manifest = build_detection_dataset(args.data_dir, args.output_dir, synthetic_dirs=args.synthetic,
                                           class_names=names, **kwargs)
    counts = {s: manifest["splits"][s]["images"] for s in ("train", "val")}
    print(f"dataset: {Path(args.output_dir).resolve() / 'data.yaml'}  tiles {counts}  classes {manifest['class_names']}")
    mix = manifest.get("synthetic_mix") or {}
    if mix.get("synthetic_tiles_before_cap", 0) > mix.get("synthetic_tiles", 0):
        print(f"synthetic tiles capped: kept {mix['synthetic_tiles']} of {mix['synthetic_tiles_before_cap']} "
              f"(synthetic_fraction {mix['synthetic_fraction']} of {mix['real_labelled_tiles']} real labelled "
              f"training tiles; set synthetic_fraction=null for no cap)")


def train(args: argparse.Namespace) -> None:
    from defectfill.detect.report import write_report
    from defectfill.detect.rtdetr import evaluate_detector, read_backbone_record, read_data_yaml, train_detector

    cfg = _load_cfg(args, model=args.model, epochs=args.epochs, device=args.device, output_dir=args.output_dir)
    check_writable(cfg.output_dir, "output folder")
    read_data_yaml(args.data_yaml)
    weights = train_detector(cfg, args.data_yaml)
    metrics = evaluate_detector(weights, args.data_yaml, "val", batch=cfg.batch, device=cfg.device, conf=cfg.conf,
                                workers=cfg.workers, config_dir=cfg.yolo_config_dir)
    results = {"config": dataclasses.asdict(cfg), "weights": str(weights),
               "backbone": read_backbone_record(weights.parent.parent), "evaluations": {"val": metrics}}
    paths = write_report(results, weights.parent.parent, "results")
    print(f"weights: {weights}\nresults: {paths[0]}  {paths[1]}")


def evaluate(args: argparse.Namespace) -> None:
    from defectfill.detect.report import write_report
    from defectfill.detect.rtdetr import evaluate_detector, read_data_yaml

    out_dir = Path(args.output_dir) if args.output_dir else Path(args.weights).resolve().parent.parent
    check_writable(out_dir, "report folder")
    if not Path(args.weights).is_file():
        raise ModelError(f"{args.weights}: weights file not found")
    read_data_yaml(args.data_yaml)
    metrics = evaluate_detector(args.weights, args.data_yaml, args.split, imgsz=args.imgsz, batch=args.batch,
                                device=args.device, workers=args.workers)
    paths = write_report({"weights": str(args.weights), "evaluations": {args.split: metrics}}, out_dir,
                         f"eval_{args.split}")
    print(f"mAP50 {metrics['map50']:.4f}  mAP50-95 {metrics['map50_95']:.4f}\nresults: {paths[0]}  {paths[1]}")


def _run(args: argparse.Namespace) -> None:
    with output_errors(args.output_dir or "output"):
        args.detect_func(args)


def _data_yaml(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--data-yaml", "--data_yaml", dest="data_yaml", required=True, help=help)
    flags.renamed(p, "--data", "--data-yaml")


def add_parser(sub) -> None:
    from defectfill.detect.rtdetr import DEFAULT_MODEL

    detect = sub.add_parser("detect", help="RT-DETR on real (+ synthetic) data: build | train | eval (offline ultralytics)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = detect.add_subparsers(dest="detect_command", required=True, metavar="{build,train,eval}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML with DetectorConfig keys")
        flags.overrides(p)

    p = verbs.add_parser("build", help="tile reference (+ synthetic) data into a YOLO dataset")
    flags.data_dir(p, required=True)
    flags.output_dir(p, required=True, help="dataset folder (data.yaml, images/, labels/, manifest.json)")
    p.add_argument("--synthetic", action="append", default=[], help="SampleWriter dataset (train only; repeatable)")
    p.add_argument("--eval", action="store_true", help="held-out evaluation folder (everything in val/)")
    p.add_argument("--class-names", help="comma-separated class list (use the training set's for --eval)")
    common(p)
    flags.renamed(p, "--reference", "--data-dir")
    flags.renamed(p, "--out", "--output-dir")
    p.set_defaults(func=_run, detect_func=build)

    p = verbs.add_parser("train", help="train RT-DETR on a built data.yaml, then evaluate on its val split")
    _data_yaml(p, "data.yaml written by `detect build`")
    p.add_argument("--model", help=f"YAML or LOCAL .pt (default {DEFAULT_MODEL})")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device")
    flags.output_dir(p, help="run folder (default: the config's output_dir)")
    common(p)
    p.set_defaults(func=_run, detect_func=train)

    p = verbs.add_parser("eval", help="evaluate weights on a data.yaml split (JSON + Markdown report)")
    p.add_argument("--weights", required=True)
    _data_yaml(p, "data.yaml written by `detect build`")
    p.add_argument("--split", default="val")
    p.add_argument("--imgsz", type=int)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device")
    p.add_argument("--workers", type=int, default=0)
    flags.output_dir(p, help="where the report goes (default: the weights' run folder)")
    p.set_defaults(func=_run, detect_func=evaluate)
