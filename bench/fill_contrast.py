"""Contrast and texture of generated defect fills against real defects (no network involved).

For a real reference folder (``images/`` + ``masks/``, the defects a generator was fitted on) and any
number of generated datasets (``defectfill.samples`` layout), every defect's
:func:`defectfill.metrics.fill.fill_statistics` (|mean grey in the mask - mean in a 2-6 px ring| and
the Laplacian-of-Gaussian texture ratio, mask over ring) is summarised per source: a fill that is much
fainter or smoother than the real defects is a cue a downstream model can learn instead of the defect.
Generated samples are measured on their exported label masks (what a downstream model is taught).

    OMP_NUM_THREADS=1 python bench/fill_contrast.py --real runs/.../work/f0/main/train \
        --generated copy_paste=runs/.../copy_paste/s0/gen defectfill=runs/.../defectfill/s0/gen \
        --out bench/results/defectfill_fill_contrast

Writes ``fill_contrast.json`` and ``fill_contrast.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", required=True, help="real reference folder (images/, masks/)")
    p.add_argument("--generated", nargs="+", required=True, metavar="NAME=DIR", help="generated datasets")
    p.add_argument("--out", required=True)
    p.add_argument("--note", default="", help="a line for the report (what the datasets are)")
    return p.parse_args(argv)


def generated_rows(root: Path) -> list:
    from defectfill.metrics.fill import fill_statistics
    from defectfill.samples import _read_mask, _read_rgb

    rows = []
    for side in sorted((root / "sidecars").glob("*.json")):
        name = side.name[: -len(".json")]
        rows.append(fill_statistics(_read_rgb(root / "images" / f"{name}.png"),
                                    _read_mask(root / "masks" / f"{name}.png")))
    return rows


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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"real": str(args.real), "generated": {k: str(v) for k, v in sources.items()}, "note": args.note,
              "summary": summary}
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
    atomic_write_text(out / "fill_contrast.md", "\n".join(lines) + "\n")
    print(out / "fill_contrast.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
