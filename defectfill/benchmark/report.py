"""Aggregate benchmark cells into ``results.json``, ``results.md`` and ``pixel_ap.png``.

Per (generator, count): mean ± std over seeds (sample std, ddof=1) of pixel_ap, pixel_f1@0.5 and
tile_auroc; the paired delta vs ``real_only`` of the SAME seed, then its mean ± std; fit+generate
wall time; peak-RSS growth (getrusage ru_maxrss). Fallbacks (random LPIPS / VGG backbones) are
read from one sidecar per generator.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from defectfill.runinfo import atomic_write_text

METRICS = ("pixel_ap", "pixel_f1@0.5", "tile_auroc")
REAL_ONLY = "real_only"


def mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def load_cells(output_dir: str | Path) -> list[dict]:
    cells = []
    for path in sorted(Path(output_dir, "cells").glob("*/result.json")):
        cell = json.loads(path.read_text())
        cell["cell"] = path.parent.name
        cells.append(cell)
    return cells


def _fallback_strings(obj, out: set):
    if isinstance(obj, dict):
        for v in obj.values():
            _fallback_strings(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _fallback_strings(v, out)
    elif isinstance(obj, str) and ("fallback" in obj.lower() or "RANDOM" in obj):
        out.add(obj)


def sidecar_fallbacks(cells: list[dict]) -> dict:
    """generator → sorted fallback descriptions found in one of its sidecars (None: no sidecar)."""
    out: dict[str, list | None] = {}
    for cell in cells:
        name = cell["generator"]
        if name in out and out[name] is not None:
            continue
        path = cell.get("sidecar_example")
        if not path or not Path(path).is_file():
            out.setdefault(name, None)
            continue
        found: set = set()
        _fallback_strings(json.loads(Path(path).read_text()), found)
        out[name] = sorted(found)
    return out


def aggregate(cells: list[dict]) -> list[dict]:
    base = {c["seed"]: c["metrics"] for c in cells if c["generator"] == REAL_ONLY}
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c["generator"], c["count"]), []).append(c)
    rows = []
    for (name, count), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != REAL_ONLY, kv[0])):
        group = sorted(group, key=lambda c: c["seed"])
        row = {"generator": name, "count": count, "seeds": [c["seed"] for c in group]}
        for m in METRICS:
            row[m] = mean_std([c["metrics"].get(m) for c in group])
            deltas = {c["seed"]: c["metrics"][m] - base[c["seed"]][m] for c in group if c["seed"] in base}
            row[f"delta_{m}"] = {**mean_std(deltas.values()), "per_seed": {str(k): v for k, v in deltas.items()}}
        runs = [c.get("generator_run") or {} for c in group]
        row["fit_generate_seconds"] = mean_std([r.get("fit_generate_seconds") for r in runs])
        row["peak_rss_growth_kib"] = mean_std([r.get("peak_rss_growth_kib") for r in runs])
        row["segmenter_seconds"] = mean_std([c.get("segmenter_seconds") for c in group])
        row["segmenter_steps"] = sorted({c["segmenter_steps"] for c in group})
        rows.append(row)
    return rows


def _fmt(d: dict, digits: int = 3) -> str:
    if d["n"] == 0 or not math.isfinite(d["mean"]):
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["generator"] if r["generator"] == REAL_ONLY else f"{r['generator']}\nn={r['count']}" for r in rows]
    means = [r["pixel_ap"]["mean"] for r in rows]
    stds = [r["pixel_ap"]["std"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color=["grey" if r["generator"] == REAL_ONLY else "C0"
                                                                   for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("pixel AP (mean ± std over seeds)")
    ax.set_title("Segmenter pixel AP by generator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(output_dir: str | Path) -> dict:
    out = Path(output_dir)
    cells = load_cells(out)
    rows = aggregate(cells)
    eval_kinds = {json.dumps({k: v for k, v in c["eval_source"].items() if k != "eval_ids"}, sort_keys=True)
                  for c in cells}
    fallbacks = sidecar_fallbacks(cells)
    report = {"cells": {c["cell"]: {"generator": c["generator"], "count": c["count"], "seed": c["seed"],
                                    **{m: c["metrics"].get(m) for m in METRICS}} for c in cells},
              "rows": rows, "eval_source": [json.loads(e) for e in sorted(eval_kinds)],
              "fallbacks": fallbacks, "std": "sample std over seeds (ddof=1)",
              "rss": "resource.getrusage(RUSAGE_SELF).ru_maxrss growth over fit+generate (KiB; high-water mark)"}
    png = plot(rows, out / "pixel_ap.png") if rows else None
    report["plot"] = str(png) if png else None
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))

    lines = ["# Benchmark results", ""]
    for e in report["eval_source"]:
        if e.get("kind") == "eval_data":
            lines.append(f"Evaluation data: the separate folder `{e['path']}` (used only for final evaluation).")
        else:
            lines.append(f"Evaluation data: a HELD-OUT split of data_dir by source (fraction {e.get('fraction')}, "
                         f"split seed {e.get('seed')}; the same images for every seed). No separate eval_data was given.")
    steps = sorted({s for r in rows for s in r["segmenter_steps"]})
    lines += ["", f"Segmenter step budget (every cell): {steps}. Std = sample std over seeds (ddof=1). "
              "Δ = paired difference vs real_only of the same seed.", "",
              "| generator | count | seeds | pixel AP | pixel F1@0.5 | tile AUROC | Δ pixel AP | Δ F1@0.5 | "
              "Δ tile AUROC | fit+generate s | peak RSS growth MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rss = r["peak_rss_growth_kib"]
        rss_s = f"{rss['mean'] / 1024:.0f}" if rss["n"] else "–"
        lines.append(f"| {r['generator']} | {r['count']} | {len(r['seeds'])} | {_fmt(r['pixel_ap'])} | "
                     f"{_fmt(r['pixel_f1@0.5'])} | {_fmt(r['tile_auroc'])} | {_fmt(r['delta_pixel_ap'])} | "
                     f"{_fmt(r['delta_pixel_f1@0.5'])} | {_fmt(r['delta_tile_auroc'])} | "
                     f"{_fmt(r['fit_generate_seconds'], 1)} | {rss_s} |")
    lines += ["", "Peak RSS: growth of `resource.getrusage(RUSAGE_SELF).ru_maxrss` over fit+generate (a process "
              "high-water mark: 0 when a stage stays below an earlier peak).", "", "## Fallbacks (one sidecar per generator)", ""]
    for name, found in sorted(fallbacks.items()):
        if found is None:
            continue
        lines.append(f"- {name}: " + ("; ".join(found) if found else "no LPIPS/VGG fallback recorded"))
    if png:
        lines += ["", f"![pixel AP]({png.name})"]
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    return report
