"""Two runs of the same benchmark grid that differ in one setting (e.g. the segmenter's step budget):
what changed, paired by cell (same task, setting, generator, fold and seed).

    python -m bench.experiments.compare_step_budget --a runs/benchmark/aitex_cpu_cv --b runs/benchmark/aitex_cpu_cv_1200 \
        --label-a "600 steps" --label-b "1200 steps" --out bench/results/benchmark_aitex_cpu_cv_1200/step_budget

Writes ``step_budget.md`` and ``step_budget.json`` to ``--out``: per setting family and generator, the mean
pixel AP and image recall@5 % FA of each run over the replicates both have, their mean paired difference
and how many replicates rose; real-only's drop from all real defects to few-shot in each run (does the
segmenter respond to the amount of real data?); and each generator's mean Δ vs real-only in each run.
The intervals and verdicts are in each run's own ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

METRICS = ("pixel_ap", "image_recall@fa5")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="benchmark output folder of the first run")
    p.add_argument("--b", required=True, help="benchmark output folder of the second run")
    p.add_argument("--label-a", default="a")
    p.add_argument("--label-b", default="b")
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def keyed(cells: list[dict]) -> dict[tuple, dict]:
    """(family, generator, fold, seed) -> cell; new-fabric settings pooled into one family (fold = fabric)."""
    from defectfill.benchmark.report import cluster, family

    return {(family(c["setting"]), c["generator"], cluster(c), c["seed"]): c for c in cells}


def _value(cell: dict, metric: str):
    from defectfill.benchmark.report import _metric

    return _metric(cell, metric)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def paired_change(a: dict[tuple, dict], b: dict[tuple, dict]) -> list[dict]:
    """Per (family, generator): mean of each run over the replicates both have, mean b − a, how many rose."""
    rows = []
    for fam, gen in sorted({k[:2] for k in a} & {k[:2] for k in b}):
        keys = sorted(k for k in a if k[:2] == (fam, gen) and k in b)
        row = {"family": fam, "generator": gen, "n": len(keys)}
        for m in METRICS:
            pairs = [(_value(a[k], m), _value(b[k], m)) for k in keys]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            row[m] = {"a": _mean(x for x, _ in pairs), "b": _mean(y for _, y in pairs),
                      "b_minus_a": _mean(y - x for x, y in pairs), "rose": sum(y > x for x, y in pairs),
                      "n": len(pairs)}
        rows.append(row)
    return rows


def real_data_response(cells: dict[tuple, dict], metric: str = "pixel_ap") -> dict[str, dict]:
    """Real-only, all real defects (main) minus few-shot k, paired by fold and seed: per few-shot family."""
    out = {}
    for fam in sorted({k[0] for k in cells if k[0].startswith("fewshot")}):
        diffs = []
        for (f, gen, fold, seed), cell in cells.items():
            main = cells.get(("main", gen, fold, seed))
            if f == fam and gen == "real_only" and main is not None:
                x, y = _value(main, metric), _value(cell, metric)
                if x is not None and y is not None:
                    diffs.append(x - y)
        out[fam] = {"main_minus_fewshot": _mean(diffs), "main_higher": sum(d > 0 for d in diffs), "n": len(diffs)}
    return out


def delta_vs_real_only(cells: dict[tuple, dict], metric: str = "pixel_ap") -> dict[tuple, dict]:
    """(family, generator) -> mean paired Δ vs real-only and how many replicates were positive."""
    out = {}
    for fam, gen in sorted({k[:2] for k in cells if k[1] != "real_only"}):
        diffs = []
        for (f, g, fold, seed), cell in cells.items():
            base = cells.get((f, "real_only", fold, seed))
            if (f, g) == (fam, gen) and base is not None:
                x, y = _value(base, metric), _value(cell, metric)
                if x is not None and y is not None:
                    diffs.append(y - x)
        out[(fam, gen)] = {"mean": _mean(diffs), "positive": sum(d > 0 for d in diffs), "n": len(diffs)}
    return out


def _f(v, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def markdown(report: dict) -> str:
    la, lb = report["label_a"], report["label_b"]
    lines = [f"# {la} vs {lb}: the same grid, paired by cell", "",
             f"Runs: `{report['a']}` ({la}) and `{report['b']}` ({lb}). Means over the replicates (fold or left-out "
             f"fabric x seed) both runs have; intervals and verdicts are in each run's `results.md`.", "",
             "## Each generator's score", "",
             f"| setting | generator | n | pixel AP {la} | pixel AP {lb} | {lb} − {la} | rose | "
             f"image recall@5%FA {la} | {lb} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["paired"]:
        ap, rec = r["pixel_ap"], r["image_recall@fa5"]
        lines.append(f"| {r['family']} | {r['generator']} | {r['n']} | {_f(ap['a'])} | {_f(ap['b'])} | "
                     f"{_f(ap['b_minus_a'], True)} | {ap['rose']}/{ap['n']} | {_f(rec['a'])} | {_f(rec['b'])} |")
    lines += ["", "## Does real-only respond to the amount of real data?", "",
              "Real-only pixel AP with all real defects (main) minus few-shot k, paired by fold and seed.", "",
              f"| few-shot | {la} | {lb} |", "|---|---|---|"]
    for fam in sorted(set(report["real_data_a"]) | set(report["real_data_b"])):
        ra, rb = report["real_data_a"].get(fam, {}), report["real_data_b"].get(fam, {})
        cell = lambda r: (f"{_f(r.get('main_minus_fewshot'), True)} (main higher in {r.get('main_higher')}/"
                          f"{r.get('n')})") if r else "–"
        lines.append(f"| {fam} | {cell(ra)} | {cell(rb)} |")
    lines += ["", "## Mean paired Δ pixel AP vs real-only", "",
              f"| setting | generator | {la} | {lb} |", "|---|---|---|---|"]
    for key in sorted(set(report["delta_a"]) | set(report["delta_b"])):
        da, db = report["delta_a"].get(key), report["delta_b"].get(key)
        cell = lambda d: f"{_f(d['mean'], True)} ({d['positive']}/{d['n']} > 0)" if d else "–"
        lines.append(f"| {key.split('|')[0]} | {key.split('|')[1]} | {cell(da)} | {cell(db)} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    from defectfill.benchmark.report import load_cells
    from defectfill.runinfo import atomic_write_text

    a, b = (keyed(load_cells(folder)[0]) for folder in (args.a, args.b))
    report = {"a": args.a, "b": args.b, "label_a": args.label_a, "label_b": args.label_b,
              "paired": paired_change(a, b), "real_data_a": real_data_response(a),
              "real_data_b": real_data_response(b),
              "delta_a": {"|".join(k): v for k, v in delta_vs_real_only(a).items()},
              "delta_b": {"|".join(k): v for k, v in delta_vs_real_only(b).items()}}
    out = Path(args.out)
    atomic_write_text(out / "step_budget.json", json.dumps(report, indent=2))
    atomic_write_text(out / "step_budget.md", markdown(report))
    print(out / "step_budget.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
