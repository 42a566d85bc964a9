"""Nested cross-validation of a benchmark setting, on the training folds only.

For every outer fold ``f`` of a benchmark profile (its ``folds``, ``eval_split_seed`` and data), the
training side of ``f`` (every source the outer fold does not evaluate) becomes its own data folder, and
an inner cross-validated benchmark runs on it once per candidate value of ``--key`` (a dotted config
key, e.g. ``segmenter.steps`` or ``segmenter.synthetic_fraction``): ``--inner-folds`` folds (fold seed
``eval_split_seed + 100 + f``), ``--seeds``, the main setting, the ``--generators`` of the profile.
The outer fold's choice is the candidate with the highest mean inner pixel AP of ``--objective`` (a
generator name; ``real_only`` for what real data alone needs, e.g. the step budget); ties go to the
first candidate listed. Outer evaluation images never enter a choice.

    OMP_NUM_THREADS=1 python -m bench.experiments.select_nested_cv --profile configs/benchmark/aitex_cpu_quick.yaml \
        --key segmenter.steps --values 300 600 1200 --objective real_only \
        --out bench/results/benchmark_aitex_cpu_cv/selection_steps

A generator's own setting is keyed by its name (``generators.r3gan.init_args.max_steps``; ``*`` for every
generator run) and several ``--objective`` generators get one choice each from the same inner grids:

    OMP_NUM_THREADS=1 python -m bench.experiments.select_nested_cv --profile configs/benchmark/aitex_cpu.yaml \
        --key 'generators.*.init_args.max_steps' --values 200 800 --objective multistage dgt r3gan \
        --generators multistage dgt r3gan --seeds 0 --inner-folds 2 --out ...

Writes ``selection.json`` and ``selection.md`` to ``--out`` (per outer fold and candidate: the inner
mean pixel AP, its std over inner replicates, the choice; and whether the profile's value agrees).
Inner grids go to ``--work`` (one benchmark folder per outer fold and candidate), so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=str(REPO / "configs" / "benchmark" / "aitex_cpu_quick.yaml"))
    p.add_argument("--key", required=True, help="dotted config key, e.g. segmenter.steps")
    p.add_argument("--values", nargs="+", required=True, help="candidate values (YAML scalars)")
    p.add_argument("--objective", nargs="+", default=["real_only"],
                   help="generator(s) whose inner pixel AP decides; several: one choice per generator")
    p.add_argument("--generators", nargs="+", default=None,
                   help="profile generators to run inside (default: real_only and --objective)")
    p.add_argument("--outer-folds", type=int, nargs="+", default=None, help="default: every outer fold")
    p.add_argument("--inner-folds", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--data", default=None, help="data folder (default: the profile's data_dir)")
    p.add_argument("--work", default=str(REPO / "runs" / "select_nested_cv"))
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def with_key(values: dict, key: str, value) -> dict:
    """A copy of config ``values`` with dotted ``key`` set to ``value``.

    In the ``generators`` list the part after ``generators`` is a generator's name (``*``: every one), e.g.
    ``generators.r3gan.init_args.max_steps``."""
    head, _, rest = key.partition(".")
    out = dict(values)
    if head == "generators" and rest:
        name, _, rest = rest.partition(".")
        if not rest:
            raise ValueError(f"{key}: name a key inside the generator, e.g. generators.{name}.init_args.max_steps")
        out[head] = [with_key(g, rest, value) if name in ("*", g.get("name")) else g for g in out.get(head) or []]
        return out
    out[head] = with_key(dict(out.get(head) or {}), rest, value) if rest else value
    return out


def get_key(values: dict, key: str):
    """The value at dotted ``key`` (a ``generators.<name>...`` key reads the first generator it names)."""
    head, _, rest = key.partition(".")
    if head == "generators" and rest:
        name, _, rest = rest.partition(".")
        for g in (values or {}).get(head) or []:
            if name in ("*", g.get("name")):
                return get_key(g, rest)
        return None
    for part in key.split("."):
        values = (values or {}).get(part)
    return values


def choose(means: dict) -> object:
    """The candidate with the highest mean (the first listed on ties; candidates without cells lose)."""
    best = None
    for value, mean in means.items():
        if mean is not None and (best is None or mean > means[best]):
            best = value
    return best


def inner_scores(out: Path, generator: str) -> list[float]:
    """Pixel AP of ``generator``'s finished main-setting cells in an inner benchmark folder."""
    scores = []
    for path in sorted((out / "cells").glob(f"segmenter-main-{generator}-n*/result.json")):
        scores.append(float(json.loads(path.read_text())["metrics"]["pixel_ap"]))
    return scores


def main(argv=None) -> int:
    import yaml

    from defectfill.benchmark.config import BenchmarkConfig
    from defectfill.benchmark.runner import Context, materialize, run_benchmark
    from defectfill.config import load_config

    args = parse_args(argv)
    raw = yaml.safe_load(Path(args.profile).read_text())
    if args.data:
        raw["data_dir"] = args.data
    profile = load_config(BenchmarkConfig, **raw)
    profile.validate()
    work = Path(args.work)
    ctx = Context(profile, work / "outer")
    everything = set(ctx.all_defect) | set(ctx.all_good)
    objectives = list(args.objective)
    names = args.generators or sorted({"real_only", *objectives})
    specs = [g for g in profile.generators if g["name"] in names]
    missing = set(names) - {g["name"] for g in specs}
    if missing:
        raise SystemExit(f"{args.profile}: no generator named {', '.join(sorted(missing))}")
    candidates = [yaml.safe_load(v) for v in args.values]
    outer = args.outer_folds if args.outer_folds is not None else list(range(profile.folds))
    rows = []
    for fold in outer:
        data = materialize(Path(profile.data_dir), everything - ctx.eval_ids(fold), work / f"outer{fold}" / "data")
        per = {o: {"means": {}, "stds": {}, "replicates": {}} for o in objectives}
        for value in candidates:
            inner = dict(raw, generators=specs)
            inner.update(data_dir=str(data), folds=args.inner_folds, seeds=args.seeds,
                         eval_split_seed=profile.eval_split_seed + 100 + fold, real_per_type=["all"],
                         new_fabric=None, leave_out=None, label_noise=None, tasks=["segmenter"],
                         output_dir=str(work / f"outer{fold}" / f"{args.key}={value}"))
            cfg = load_config(BenchmarkConfig, **with_key(inner, args.key, value))
            run_benchmark(cfg)
            for o in objectives:
                scores = inner_scores(Path(cfg.output_dir), o)
                per[o]["means"][value] = statistics.fmean(scores) if scores else None
                per[o]["stds"][value] = statistics.stdev(scores) if len(scores) > 1 else None
                per[o]["replicates"][value] = len(scores)
        for o in objectives:
            per[o]["chosen"] = choose(per[o]["means"])
        rows.append({"outer_fold": fold, **per[objectives[0]], "objectives": per})
    default = get_key(raw, args.key)
    chosen = [r["chosen"] for r in rows]
    choices = {o: [r["objectives"][o]["chosen"] for r in rows] for o in objectives}
    result = {"profile": args.profile, "key": args.key, "candidates": candidates,
              "objective": objectives[0] if len(objectives) == 1 else objectives, "choices_by_objective": choices,
              "generators": names, "inner_folds": args.inner_folds, "seeds": args.seeds, "profile_value": default,
              "outer": rows, "choices": chosen,
              "profile_value_chosen_in": sum(c == default for c in chosen),
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "selection.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [f"# Nested CV: {args.key} for {', '.join(objectives)} (training folds only)", "",
             f"Profile `{args.profile}` (its value: `{default}`); inner {args.inner_folds}-fold CV on each outer "
             f"fold's training side, seeds {args.seeds}, generators {', '.join(names)}. Mean inner pixel AP of "
             f"the objective ± std over inner replicates (inner fold x seed).", ""]
    for o in objectives:
        if len(objectives) > 1:
            lines += [f"## {o}", ""]
        lines += ["| outer fold | " + " | ".join(str(v) for v in candidates) + " | chosen |",
                  "|---" * (len(candidates) + 2) + "|"]
        for r in rows:
            q = r["objectives"][o]
            cells = [f"{q['means'][v]:.4f} ± {q['stds'][v] or 0:.4f} (n={q['replicates'][v]})"
                     if q["means"][v] is not None else "–" for v in candidates]
            lines.append(f"| {r['outer_fold']} | " + " | ".join(cells) + f" | {q['chosen']} |")
        own = get_key(raw, args.key.replace("generators.*.", f"generators.{o}.", 1))
        lines += ["", f"The profile's value `{own}` is chosen in {sum(c == own for c in choices[o])} of "
                  f"{len(rows)} outer folds.", ""]
    (out / "selection.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
