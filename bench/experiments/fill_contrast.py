"""Contrast and texture of generated defect fills against real defects (no network involved).

For a real reference folder (``images/`` + ``masks/``, the defects a generator was fitted on) and any
number of generated datasets (``defectfill.generation.samples`` layout), every defect's
:func:`defectfill.metrics.fill.fill_statistics` (|mean grey in the mask - mean in a 2-6 px ring| and
the Laplacian-of-Gaussian texture ratio, mask over ring) is summarised per source: a fill that is much
fainter or smoother than the real defects is a cue a downstream model can learn instead of the defect.
Generated samples are measured on their exported label masks (what a downstream model is taught).

    OMP_NUM_THREADS=1 python -m bench.experiments.fill_contrast --real runs/.../work/f0/main/train \
        --generated copy_paste=runs/.../copy_paste/s0/gen defectfill=runs/.../defectfill/s0/gen \
        --out bench/results/defectfill_fill_contrast

Writes ``fill_contrast.json`` and ``fill_contrast.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="real reference folder (images/, masks/)")
    p.add_argument("--generated", nargs="+", required=True, metavar="NAME=DIR", help="generated datasets")
    p.add_argument("--out", required=True)
    p.add_argument("--note", default="", help="a line for the report (what the datasets are)")
    p.add_argument("--paired", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="two --generated names painted on the same clean images and masks: mean |A - B| in the "
                        "mask beside A's mean change from the clean image (how much the difference between "
                        "their settings moves a fill)")
    return p.parse_args(argv)


def generated_rows(root: Path) -> list:
    from defectfill.generation.samples import _read_mask, _read_rgb
    from defectfill.metrics.fill import fill_statistics

    rows = []
    for side in sorted((root / "sidecars").glob("*.json")):
        name = side.name[: -len(".json")]
        rows.append(fill_statistics(_read_rgb(root / "images" / f"{name}.png"),
                                    _read_mask(root / "masks" / f"{name}.png")))
    return rows


def paired_difference(a: Path, b: Path) -> dict:
    """Over the samples both datasets accepted with the same requested mask: mean |a - b| inside the mask
    and mean |a - clean| inside it (grey levels)."""
    import numpy as np

    from defectfill.benchmark.gallery import _requested_mask
    from defectfill.generation.samples import _read_rgb

    diffs, changes = [], []
    for side in sorted((a / "sidecars").glob("*.json")):
        name = side.name[: -len(".json")]
        if not (b / "sidecars" / side.name).is_file():
            continue
        mask = _requested_mask(a, name)
        if not np.array_equal(mask, _requested_mask(b, name)):
            continue
        x, y = (_read_rgb(root / "images" / f"{name}.png").astype(float) for root in (a, b))
        clean = _read_rgb(a / "clean" / f"{name}.png").astype(float)
        diffs.append(float(np.abs(x - y)[mask].mean()))
        changes.append(float(np.abs(x - clean)[mask].mean()))
    return {"n": len(diffs), "mean_abs_difference": round(float(np.mean(diffs)), 2) if diffs else None,
            "mean_abs_change_from_clean": round(float(np.mean(changes)), 2) if changes else None}


def main(argv=None) -> int:
    args = parse_args(argv)
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.errors import DataError
    from defectfill.metrics.fill import fill_statistics, summarize_fills
    from defectfill.runinfo import atomic_write_text

    sources = {}
    for item in args.generated:
        name, sep, folder = item.partition("=")
        if not sep or not Path(folder, "sidecars").is_dir():
            raise SystemExit(f"--generated {item}: expected NAME=DIR with DIR a generated dataset (sidecars/)")
        sources[name] = Path(folder)
    try:
        real = load_reference_dataset(args.real)
    except DataError as exc:
        raise SystemExit(str(exc)) from exc
    summary = {"real": summarize_fills([fill_statistics(s.image, s.mask) for s in real.samples])}
    for name, folder in sources.items():
        summary[name] = summarize_fills(generated_rows(folder))
    paired = []
    for a, b in args.paired:
        if a not in sources or b not in sources:
            raise SystemExit(f"--paired {a} {b}: both must be --generated names")
        paired.append({"a": a, "b": b, **paired_difference(sources[a], sources[b])})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"real": str(args.real), "generated": {k: str(v) for k, v in sources.items()}, "note": args.note,
              "summary": summary, "paired": paired}
    atomic_write_text(out / "fill_contrast.json", json.dumps(record, indent=2))
    lines = ["# Contrast and texture of defect fills", "", *([args.note, ""] if args.note else []),
             (f"Real: `{args.real}`. Contrast = |mean grey in the mask − mean in a 2–6 px ring|; texture ratio = "
              "std of the Laplacian of Gaussian (σ 0.5) in the mask over the ring (1: the weave's fine structure, "
              "→ 0: smooth). Medians, [10th, 90th] percentiles."), "",
             "| source | n | contrast (grey levels) | texture ratio |", "|---|---|---|---|"]
    for name, s in summary.items():
        if s["n"]:
            lines.append(f"| {name} | {s['n']} | {s['abs_contrast_median']:.1f} [{s['abs_contrast_p10_p90'][0]:.1f}, "
                         f"{s['abs_contrast_p10_p90'][1]:.1f}] | {s['texture_ratio_median']:.2f} "
                         f"[{s['texture_ratio_p10_p90'][0]:.2f}, {s['texture_ratio_p10_p90'][1]:.2f}] |")
    if paired:
        lines += ["", ("Paired, on the same clean images and masks: mean |A − B| inside the mask beside A's mean change "
                       "from the clean image (grey levels)."), "", "| A | B | n | mean abs(A − B) | mean abs(A − clean) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['a']} | {r['b']} | {r['n']} | {r['mean_abs_difference']} | {r['mean_abs_change_from_clean']} |"
                  for r in paired]
    atomic_write_text(out / "fill_contrast.md", "\n".join(lines) + "\n")
    print(out / "fill_contrast.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
