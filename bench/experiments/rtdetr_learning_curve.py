"""RT-DETR learning curve on CPU, real data only: mAP50 and recall on held-out tiles vs iterations.

One long ultralytics run (``configs/rtdetr/curve_lite0.yaml``: the pretrained, frozen EfficientNet-Lite0
RT-DETR) on the benchmark's data protocol (``defectfill.benchmark.runner.Context``): 30 % of the
AITEX sources held out for evaluation (``eval_split_seed`` 1234, stratified by defect type), the rest
split train/val by ``--seed`` (val is ultralytics' final-epoch val only). At the first epoch end at or
past each iteration in ``--eval-at`` (then every ``--eval-every``) the saved weights (``last.pt``,
ultralytics' EMA) are copied to ``ckpt/iter_NNNNNN.pt`` and evaluated on the held-out tiles with
:func:`defectfill.detect.rtdetr.evaluate_detector`; ``curve.json`` / ``curve.md`` are rewritten after
every evaluation. Training stops by itself when ``--budget-minutes`` (the whole script's wall time,
evaluations included) are spent. An iteration is one optimiser step on one batch (``nbs = batch``).

    mkdir -p runs/rtdetr_curve
    nohup env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 YOLO_OFFLINE=true .venv/bin/python \\
        bench/experiments/rtdetr_learning_curve.py --data ../shared/data/aitex --output-dir runs/rtdetr_curve \\
        --budget-minutes 75 > runs/rtdetr_curve/log.txt 2>&1 &

Resumable: rerun the same command. A finished run only rewrites the results (evaluating any saved
checkpoint not yet in the curve); an interrupted one resumes ultralytics from ``last.pt`` with what
is left of the budget. The data under ``--data`` is read only; derived tiles go under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LOG = logging.getLogger("rtdetr_curve")
THRESHOLDS = (0.0, 0.01, 0.05, 0.1)  # "leaves zero" = first evaluated checkpoint with a value above each


def parse_args(input_args: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/aitex", help="reference folder (read only)")
    p.add_argument("--output-dir", "--output_dir", default="runs/rtdetr_curve",
                   help="run folder: work/ (tiles), train/ (ultralytics), ckpt/, curve.log")
    p.add_argument("--results-dir", "--results_dir", default=str(REPO / "bench/results/rtdetr_learning_curve"),
                   help="where curve.json and curve.md go")
    p.add_argument("--config", default=str(REPO / "configs/rtdetr/curve_lite0.yaml"), help="DetectorConfig YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a DetectorConfig key (repeatable)")
    p.add_argument("--budget-minutes", "--budget_minutes", type=float, default=75.0,
                   help="wall-time budget of the whole script (data, training, evaluations)")
    p.add_argument("--reserve-minutes", "--reserve_minutes", type=float, default=3.0,
                   help="part of the budget kept for ultralytics' final validation and the last evaluation")
    p.add_argument("--eval-at", "--eval_at", default="25,50,75,100,150,200,300,400,500",
                   help="comma-separated iterations to evaluate at (at the first epoch end at or past each)")
    p.add_argument("--eval-every", "--eval_every", type=int, default=100,
                   help="after the last --eval-at point, evaluate every this many iterations")
    p.add_argument("--eval-fraction", "--eval_fraction", type=float, default=0.3)
    p.add_argument("--folds", type=int, default=None,
                   help="cross-validated folds (the CV benchmark's, by source): evaluate on fold --fold instead of "
                        "one --eval-fraction split")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--eval-split-seed", "--eval_split_seed", type=int, default=1234)
    p.add_argument("--val-fraction", "--val_fraction", type=float, default=0.25)
    p.add_argument("--eval-good-tiles-per-image", "--eval_good_tiles_per_image", type=int, default=2,
                   help="background tiles per held-out good image (the aitex_cpu profile's 2; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="train/val split and training seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (ultralytics resets them on CPU)")
    args = p.parse_args(input_args)
    args.eval_at = sorted({int(v) for v in args.eval_at.split(",") if v.strip()})
    if args.eval_every < 1 or args.budget_minutes <= args.reserve_minutes or any(v < 1 for v in args.eval_at):
        p.error("need --eval-every >= 1, --eval-at >= 1 and --budget-minutes > --reserve-minutes")
    return args


# ----------------------------------------------------------------------------- small helpers


def eval_points_reached(done: list[int], iteration: int, eval_at: list[int], every: int) -> bool:
    """Whether ``iteration`` is at or past a scheduled point that no evaluation in ``done`` covers yet."""
    last = max(done, default=0)
    points = list(eval_at)
    nxt = (points[-1] if points else 0) + every
    while nxt <= iteration:
        points.append(nxt)
        nxt += every
    return any(last < p <= iteration for p in points)


def first_above(points: list[dict], key: str, threshold: float) -> int | None:
    """Iteration of the first evaluated checkpoint whose ``key`` exceeds ``threshold`` (None: none did)."""
    for point in sorted(points, key=lambda r: r["iteration"]):
        if (point.get(key) or 0.0) > threshold:
            return point["iteration"]
    return None


def stays_above(points: list[dict], key: str, threshold: float) -> int | None:
    """Iteration from which every later evaluated checkpoint's ``key`` exceeds ``threshold`` (None: never)."""
    found = None
    for point in sorted(points, key=lambda r: r["iteration"]):
        if (point.get(key) or 0.0) > threshold:
            found = point["iteration"] if found is None else found
        else:
            found = None
    return found


def _setup_logging(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    for handler in (logging.FileHandler(out / "curve.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)


def _rng_state():
    import numpy as np
    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state) -> None:
    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


# ----------------------------------------------------------------------------- data


def prepare_data(args: argparse.Namespace, cfg, out: Path) -> dict:
    """Held-out evaluation folder and train/val dataset, exactly as the benchmark runner makes them."""
    from defectfill.benchmark.runner import MAIN, BenchmarkConfig, Context, materialize
    from defectfill.detect.dataset import build_detection_dataset

    bench = BenchmarkConfig(data_dir=args.data, eval_fraction=args.eval_fraction, folds=args.folds or 1,
                            eval_split_seed=args.eval_split_seed, val_fraction=args.val_fraction,
                            output_dir=str(out), tasks=["rtdetr"],
                            detector={"tile": cfg.tile, "single_class": cfg.single_class,
                                      "eval_good_tiles_per_image": args.eval_good_tiles_per_image or None,
                                      "merge_gap": cfg.merge_gap, "min_box_side": cfg.min_box_side})
    bench.validate()
    ctx = Context(bench, out)
    fold = args.fold if args.folds else 0
    train_ids, val_ids = ctx.split(args.seed, MAIN, fold)
    pool = materialize(ctx.data, train_ids | val_ids, out / "work" / f"s{args.seed}" / "pool")
    data_dir = out / "work" / f"s{args.seed}" / "dataset"
    if not (data_dir / "manifest.json").is_file() or not (data_dir / "data.yaml").is_file():
        kwargs = cfg.dataset_kwargs()
        kwargs.pop("val_fraction")
        build_detection_dataset(pool, data_dir, val_ids=sorted(val_ids), **kwargs)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    eval_yaml = Path(ctx.eval_detection(MAIN, fold)["all"])
    eval_manifest = json.loads((eval_yaml.parent / "manifest.json").read_text())
    summary = {k: {kk: v[kk] for kk in ("images", "labelled", "background", "boxes")}
               for k, v in manifest["splits"].items()}
    return {"train_yaml": str(data_dir / "data.yaml"), "eval_yaml": str(eval_yaml),
            "eval_source": ctx.eval_source_for(fold), "train_ids": sorted(train_ids), "val_ids": sorted(val_ids),
            "splits": summary, "eval_tiles": {kk: eval_manifest["splits"]["val"][kk]
                                              for kk in ("images", "labelled", "background", "boxes")}}


# ----------------------------------------------------------------------------- results


def write_results(curve: dict, results_dir: Path) -> None:
    """``curve.json`` and ``curve.md`` (atomic), with the first iterations above each threshold."""
    from defectfill.runinfo import atomic_write_text

    points = sorted(curve["points"], key=lambda r: r["iteration"])
    curve["points"] = points
    curve["leaves_zero"] = {key: {f"> {t:g}": first_above(points, key, t) for t in THRESHOLDS}
                            for key in ("map50", "recall")}
    curve["stays_above"] = {key: {f"> {t:g}": stays_above(points, key, t) for t in THRESHOLDS}
                            for key in ("map50", "recall")}
    timed = [p for p in points if p["train_seconds"]]
    if timed:
        curve["seconds_per_iteration"] = round(timed[-1]["train_seconds"] / timed[-1]["iteration"], 3)
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / "curve.json", json.dumps(curve, indent=1) + "\n")
    atomic_write_text(results_dir / "curve.md", render_markdown(curve))


def _fmt(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def render_markdown(curve: dict) -> str:
    """The Markdown report of a curve dict (what :func:`write_results` writes as ``curve.md``)."""
    cfg, data = curve["config"], curve["data"]
    backbone = (curve.get("backbone") or {}).get("start") or {}
    lines = [
        "# RT-DETR learning curve (real data only, CPU)", "",
        f"Status: **{curve['status']}**. Written by `bench/experiments/rtdetr_learning_curve.py`; numbers below are measured.", "",
        "Command:", "", "```", curve["command"], "```", "",
        f"- model: `{cfg['model']}`; backbone: {backbone.get('name', 'n/a')}, "
        f"pretrained={backbone.get('pretrained')}, frozen={backbone.get('frozen')}, "
        f"trainable backbone params {backbone.get('trainable_params')}; "
        f"max |backbone - packaged weights| at train start {backbone.get('max_abs_diff_to_package')}",
        f"- training: batch {cfg['batch']} (one optimiser step per batch), imgsz {cfg['imgsz']}, lr0 {cfg['lr0']}, "
        f"lrf {cfg['lrf']}, {cfg['optimizer']}, warmup_epochs {cfg['warmup_epochs']}, mosaic {cfg['mosaic']}, "
        f"seed {cfg['seed']}, torch threads {curve['args']['threads']}",
        f"- train tiles: {data['splits']['train']} (val: {data['splits']['val']})",
        f"- held-out eval tiles: {data['eval_tiles']} from {len(data['eval_source'].get('eval_ids', []))} sources "
        f"({data['eval_source'].get('kind')}, fraction {data['eval_source'].get('fraction')}, "
        f"seed {data['eval_source'].get('seed')})",
        f"- budget {curve['args']['budget_minutes']} min wall for the whole script; "
        f"seconds per iteration (training only): {curve.get('seconds_per_iteration', '–')}",
        "",
        "| iteration | epoch | train s | wall s | mAP50 | mAP50-95 | precision | recall | F1 | eval s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in curve["points"]:
        lines.append(f"| {r['iteration']} | {r['epoch']} | {_fmt(r['train_seconds'], 0)} | {r['wall_seconds']:.0f} | "
                     f"{_fmt(r['map50'])} | {_fmt(r['map50_95'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | "
                     f"{_fmt(r['f1'])} | {r['eval_seconds']:.0f} |")
    lines += ["", "Where it leaves zero (first evaluated checkpoint above the threshold; "
              "precision/recall are ultralytics' values at the confidence of maximal F1, conf >= 0.001):", ""]
    for key, label in (("map50", "mAP50"), ("recall", "recall")):
        for table, what in (("leaves_zero", "first above"), ("stays_above", "above from then on")):
            parts = [f"> {k[2:]}: iteration {v}" if v is not None else f"> {k[2:]}: never"
                     for k, v in curve[table][key].items()]
            lines.append(f"- {label}, {what}: " + "; ".join(parts))
    last = curve["points"][-1]["iteration"] if curve["points"] else 0
    if curve["points"] and first_above(curve["points"], "map50", 0.0) is None:
        lines.append(f"- mAP50 never left zero within {last} iterations.")
    if curve["points"]:
        best = max(curve["points"], key=lambda r: r["map50"] or 0.0)
        tail = curve["points"][-5:]
        mean = {k: sum(r[k] or 0.0 for r in tail) / len(tail) for k in ("map50", "recall")}
        lines.append(f"- best mAP50 {_fmt(best['map50'])} at iteration {best['iteration']}; mean of the last "
                     f"{len(tail)} evaluations (iterations {tail[0]['iteration']}-{last}): "
                     f"mAP50 {_fmt(mean['map50'])}, recall {_fmt(mean['recall'])}")
    lines += ["", f"Versions: {curve.get('versions')}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from defectfill.config import load_config
    from defectfill.detect.rtdetr import DetectorConfig, evaluate_detector, read_backbone_record, train_detector
    from defectfill.runinfo import package_versions

    t_script = time.time()
    out = Path(args.output_dir).expanduser().resolve()
    results_dir = Path(args.results_dir).expanduser().resolve()
    _setup_logging(out)
    torch.set_num_threads(args.threads)
    cfg = load_config(DetectorConfig, args.config, args.overrides, seed=args.seed, output_dir=str(out), name="train")
    cfg.nbs = cfg.batch  # one optimiser step per batch, as the benchmark's detector_job
    cfg.patience = 0  # no early stopping (ultralytics: 0 = never)
    cfg.train_args = {"val": False, **(cfg.train_args or {})}  # ultralytics' own val only at the end
    cfg.yolo_config_dir = cfg.yolo_config_dir or str(out / "yolo-config")

    previous = results_dir / "curve.json"
    curve = json.loads(previous.read_text()) if previous.is_file() else None
    if curve is not None and curve.get("output_dir") != str(out):
        LOG.info("results in %s belong to another run (%s): starting a new curve", previous, curve.get("output_dir"))
        curve = None
    t0 = time.perf_counter()
    data = prepare_data(args, cfg, out)
    LOG.info("data ready in %.0f s: train %s, held-out eval %s", time.perf_counter() - t0,
             data["splits"]["train"], data["eval_tiles"])
    env = [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "YOLO_OFFLINE") if k in os.environ]
    command = " ".join(["env", *env, shlex.quote(sys.executable), *map(shlex.quote, sys.argv)])
    if curve is None:
        curve = {"status": "running", "output_dir": str(out), "command": command, "points": [], "sessions": []}
    curve.setdefault("args", dict(vars(args)))  # of the session that trained (rewritten when one trains)
    curve.setdefault("config", dataclasses.asdict(cfg))
    curve.update(data=data, versions=package_versions())
    spent = sum(s.get("wall_seconds", 0.0) for s in curve["sessions"])
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "wall_seconds": 0.0, "command": command}
    curve["sessions"].append(session)
    ckpt_dir = out / "ckpt"
    ckpt_dir.mkdir(exist_ok=True)
    last = out / "train" / "weights" / "last.pt"

    def evaluate(weights: Path, iteration: int, epoch: int, train_seconds: float | None) -> None:
        t = time.perf_counter()
        m = evaluate_detector(weights, data["eval_yaml"], "val", batch=cfg.batch, device="cpu", conf=cfg.conf,
                              workers=0, config_dir=cfg.yolo_config_dir)
        point = {"iteration": iteration, "epoch": epoch,
                 "train_seconds": None if train_seconds is None else round(train_seconds, 1),
                 "wall_seconds": round(spent + time.time() - t_script, 1),
                 "eval_seconds": round(time.perf_counter() - t, 1),
                 "weights": str(weights), **{k: m[k] for k in ("map50", "map50_95", "precision", "recall", "f1",
                                                              "instances")}}
        curve["points"] = [p for p in curve["points"] if p["iteration"] != iteration] + [point]
        session["wall_seconds"] = round(time.time() - t_script, 1)
        curve["backbone"] = read_backbone_record(out / "train") or curve.get("backbone")
        write_results(curve, results_dir)
        LOG.info("iteration %d (epoch %d, %.0f s training): mAP50 %.4f  recall %.4f  precision %.4f  (eval %.0f s)",
                 iteration, epoch, train_seconds, m["map50"] or 0, m["recall"] or 0, m["precision"] or 0,
                 point["eval_seconds"])

    state = {"iteration": 0, "t_start": 0.0, "eval_seconds": 0.0, "train_before": 0.0}

    def on_train_start(trainer) -> None:
        torch.set_num_threads(args.threads)  # select_device() resets them to ultralytics' NUM_THREADS
        state["iteration"] = trainer.start_epoch * len(trainer.train_loader)
        progress = [p for p in [*curve["points"], curve.get("progress") or {}]
                    if p.get("train_seconds") is not None and p["iteration"] <= state["iteration"]]
        state["train_before"] = max((p["train_seconds"] for p in progress), default=0.0)  # earlier sessions
        state["t_start"] = time.perf_counter()
        LOG.info("training from iteration %d: %d batches per epoch, %d train tiles", state["iteration"],
                 len(trainer.train_loader), len(trainer.train_loader.dataset))

    def on_train_batch_end(trainer) -> None:
        state["iteration"] += 1

    def train_seconds() -> float:
        return state["train_before"] + time.perf_counter() - state["t_start"] - state["eval_seconds"]

    def on_model_save(trainer) -> None:
        done = [p["iteration"] for p in curve["points"]]
        final = bool(trainer.stop) or trainer.epoch + 1 >= trainer.epochs
        if not (final or eval_points_reached(done, state["iteration"], args.eval_at, args.eval_every)):
            session["wall_seconds"] = round(time.time() - t_script, 1)  # budget accounting survives a kill
            curve["progress"] = {"iteration": state["iteration"], "train_seconds": round(train_seconds(), 1)}
            write_results(curve, results_dir)
            return
        t = time.perf_counter()
        weights = ckpt_dir / f"iter_{state['iteration']:06d}.pt"
        shutil.copyfile(last, weights)
        rng = _rng_state()  # evaluating must not change the training run
        curve["progress"] = {"iteration": state["iteration"], "train_seconds": round(train_seconds(), 1)}
        evaluate(weights, state["iteration"], trainer.epoch + 1, train_seconds())
        _set_rng_state(rng)
        torch.set_num_threads(args.threads)
        state["eval_seconds"] += time.perf_counter() - t

    callbacks = {"on_train_start": on_train_start, "on_train_batch_end": on_train_batch_end,
                 "on_model_save": on_model_save}
    remaining_h = (args.budget_minutes * 60 - spent - (time.time() - t_script) - args.reserve_minutes * 60) / 3600
    if curve["status"] != "finished" and remaining_h > 0:
        cfg.train_args = {**cfg.train_args, "time": round(remaining_h, 4)}
        if last.is_file():
            LOG.info("resuming %s with %.1f min left", last, remaining_h * 60)
            cfg.model, cfg.train_args = str(last), {**cfg.train_args, "resume": True}
        else:
            LOG.info("training %s for %.1f min (ultralytics `time`)", cfg.model, remaining_h * 60)
        curve["config"], curve["args"] = dataclasses.asdict(cfg), dict(vars(args))
        train_detector(cfg, data["train_yaml"], callbacks=callbacks)
        curve["status"] = "finished"
    elif curve["status"] != "finished":
        LOG.info("no budget left (%.1f min spent): finishing without more training", spent / 60)
        curve["status"] = "finished (budget spent)"
    # checkpoints saved but never evaluated (e.g. killed during an evaluation)
    done = {p["iteration"] for p in curve["points"]}
    for weights in sorted(ckpt_dir.glob("iter_*.pt")):
        iteration = int(weights.stem.split("_")[1])
        if iteration not in done:
            evaluate(weights, iteration, -1, None)
    session["wall_seconds"] = round(time.time() - t_script, 1)
    curve["backbone"] = read_backbone_record(out / "train") or curve.get("backbone")
    write_results(curve, results_dir)
    LOG.info("done in %.1f min: %s", (time.time() - t_script) / 60, results_dir / "curve.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
