"""Where an RT-DETR learning-curve run's detector stands: its last checkpoint evaluated on its own training
tiles, its validation tiles, its evaluation fold, and the evaluation folds of other runs (another box rule).

Train >> evaluation says the data limits it; train itself low says the budget or the model does. Uses the run
folders ``bench/experiments/rtdetr_learning_curve.py`` writes (``--output-dir``): ``ckpt/iter_*.pt`` (the last one),
``work/s<seed>/dataset/data.yaml`` (train/val), ``work/eval_det/main-f<fold>/all/data.yaml``.

    OMP_NUM_THREADS=1 python -m bench.experiments.rtdetr_fit_check --run runs/rtdetr_curve_fast_f0 \\
        --other old_labels=runs/rtdetr_curve_old_f0 --out bench/results/rtdetr_learning_curve/fast_fold0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a learning-curve --output-dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--other", action="append", default=[], metavar="NAME=RUN",
                   help="also evaluate on RUN's evaluation folder (e.g. the old box rule)")
    p.add_argument("--out", required=True, help="where fit_check.json / fit_check.md go")
    return p.parse_args(argv)


def eval_folder(run: Path) -> Path:
    found = sorted((run / "work" / "eval_det").glob("*/all/data.yaml"))
    if len(found) != 1:
        raise SystemExit(f"{run}: expected one evaluation folder under work/eval_det, found {len(found)}")
    return found[0]


def main(argv=None) -> int:
    from defectfill.detect.rtdetr import evaluate_detector
    from defectfill.runinfo import atomic_write_text

    args = parse_args(argv)
    run = Path(args.run)
    ckpts = sorted((run / "ckpt").glob("iter_*.pt"))
    if not ckpts:
        raise SystemExit(f"{run}/ckpt: no checkpoint")
    weights = ckpts[-1]
    own = run / "work" / f"s{args.seed}" / "dataset" / "data.yaml"
    cases = {"own train tiles": (own, "train"), "own val tiles": (own, "val"),
             "evaluation fold": (eval_folder(run), "val")}
    for item in args.other:
        name, _, other = item.partition("=")
        cases[f"evaluation fold, {name}"] = (eval_folder(Path(other)), "val")
    rows = {}
    for name, (data, split) in cases.items():
        m = evaluate_detector(weights, data, split, batch=8, device="cpu")
        rows[name] = {k: m[k] for k in ("map50", "map50_95", "precision", "recall", "instances")}
        rows[name]["data"] = str(data)
        print(name, rows[name], flush=True)
    result = {"weights": str(weights), "iteration": int(weights.stem.split("_")[1]), "cases": rows,
              "command": " ".join(["python", "bench/experiments/rtdetr_fit_check.py", *(argv or sys.argv[1:])])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fit_check.json", json.dumps(result, indent=1))
    lines = [f"# Fit check of `{weights}` (iteration {result['iteration']})", "", f"`{result['command']}`", "",
             "| tiles | boxes | mAP50 | mAP50-95 | precision | recall |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['instances']} | {r['map50']:.4f} | {r['map50_95']:.4f} | {r['precision']:.4f} "
                     f"| {r['recall']:.4f} |")
    atomic_write_text(out / "fit_check.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
