"""Detector results as JSON + Markdown, written atomically (temp file + rename).

A results dict holds ``evaluations``: ``{label: metrics}`` where each ``metrics`` is what
:func:`defectfill.detect.rtdetr.evaluate_detector` returns; any other keys (config, dataset
summary, timing) are kept in the JSON. A bare metrics dict is accepted too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from defectfill.runinfo import atomic_write_text

SUMMARY_COLUMNS = (("mAP50", "map50"), ("mAP50-95", "map50_95"), ("P@0.5", "precision"),
                   ("R@0.5", "recall"), ("F1@0.5", "f1"))
CLASS_COLUMNS = (("images", "images"), ("instances", "instances"), ("AP50", "ap50"), ("AP50-95", "ap50_95"),
                 ("P", "precision"), ("R", "recall"), ("F1", "f1"))


def _evaluations(results: dict) -> dict[str, dict]:
    """``{label: metrics}`` of a results dict (a bare metrics dict becomes ``{its split: it}``)."""
    if "evaluations" in results:
        return dict(results["evaluations"])
    if "map50" in results:
        return {str(results.get("split", "eval")): results}
    raise ValueError("results hold no 'evaluations' and are not a metrics dict")


def _cell(value) -> str:
    """A table cell: 4 decimals for floats, '–' for missing values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def comparison_markdown(runs: dict[str, dict]) -> str:
    """One summary row per run: ``{run label: metrics}`` -> Markdown table (mAP50, mAP50-95, P, R, F1)."""
    rows = [[label, *(m.get(key) for _, key in SUMMARY_COLUMNS), m.get("instances")] for label, m in runs.items()]
    return "\n".join(_table(["run", *(c for c, _ in SUMMARY_COLUMNS), "instances"], rows)) + "\n"


def results_markdown(results: dict, title: str = "Detector results") -> str:
    """Markdown: a summary table over the evaluations, then one per-class table each."""
    evaluations = _evaluations(results)
    lines = [f"# {title}", ""]
    if results.get("weights"):
        lines += [f"weights: `{results['weights']}`", ""]
    lines += [comparison_markdown(evaluations)]
    for label, metrics in evaluations.items():
        lines += [f"## {label}: per class", ""]
        if metrics.get("data"):
            lines += [f"data: `{metrics['data']}` (split `{metrics.get('split')}`)", ""]
        rows = [[name, *(row.get(key) for _, key in CLASS_COLUMNS)]
                for name, row in metrics.get("per_class", {}).items()]
        lines += _table(["class", *(c for c, _ in CLASS_COLUMNS)], rows) + [""]
    lines += ["P/R/F1 at IoU 0.5, at the confidence that maximises the class-mean F1 (ultralytics).", ""]
    return "\n".join(lines)


def write_report(results: dict, out_dir: str | os.PathLike, stem: str = "results",
                 title: str = "Detector results") -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``<stem>.md`` atomically; return both paths."""
    out_dir = Path(out_dir)
    markdown = results_markdown(results, title)  # fails on malformed results before any file is written
    json_path = atomic_write_text(out_dir / f"{stem}.json", json.dumps(results, indent=2, default=str) + "\n")
    md_path = atomic_write_text(out_dir / f"{stem}.md", markdown)
    return json_path, md_path
