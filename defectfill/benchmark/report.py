"""Aggregate benchmark cells into ``results.json``, ``results.md`` and PNG figures.

Rows are (task, setting, generator, count): mean ± std over seeds (sample std, ddof=1) and the
paired delta vs ``real_only`` of the SAME task, setting and seed. Generator rows add fit+generate
time, the job's peak memory and FID / KID / IC-LPIPS (with the networks that produced them). The
two open questions get their own tables: ``split_long`` vs one box per component (RT-DETR) and
recall of a defect type left out of all training data vs the same type seen in training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from defectfill.benchmark import stats
from defectfill.benchmark.config import MAIN, NEW_FABRIC, REAL_ONLY
from defectfill.benchmark.gallery import side_by_side_sheet
from defectfill.benchmark.tasks import TASKS
from defectfill.detect.dataset import box_fill_stats
from defectfill.formats.images import read_mask
from defectfill.runinfo import atomic_write_text

TASK_METRICS = {name: task.metrics for name, task in TASKS.items()}
HEADLINE = {name: task.headline for name, task in TASKS.items()}
RECALL = {name: task.recall for name, task in TASKS.items()}
SEEN_UNSEEN_TASKS = ("segmenter", "rtdetr")  # tasks with cells in both the main and the leave-out setting
NEAR_ZERO_MAP50 = 0.05


def replicate(cell: dict) -> str:
    """A cell's replicate label: evaluation fold and seed (``f<fold>-s<seed>``)."""
    return f"f{cell.get('fold', 0)}-s{cell['seed']}"


def mean_std(values) -> dict:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def load_cells(output_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(finished cells, failed cells) under ``output_dir/cells``."""
    cells, errors = [], []
    for folder in sorted(Path(output_dir, "cells").glob("*")):
        if (folder / "result.json").is_file():
            cells.append(json.loads((folder / "result.json").read_text()))
        elif (folder / "error.json").is_file():
            errors.append(json.loads((folder / "error.json").read_text()))
    return cells, errors


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
        if out.get(name) is not None:
            continue
        path = cell.get("sidecar_example")
        if not path or not Path(path).is_file():
            out.setdefault(name, None)
            continue
        found: set = set()
        _fallback_strings(json.loads(Path(path).read_text()), found)
        out[name] = sorted(found)
    return out


ALL_PIXELS = "_all_pixels"  # suffix: the same metric over every pixel (not only fabric)


def _metric(cell: dict, name: str, evaluation: str = "all"):
    ev = (cell.get("evaluations") or {}).get(evaluation) or {}
    if name.endswith(ALL_PIXELS):
        ev = ev.get("all_pixels") or (ev if ev.get("pixel_region", "all") == "all" else {})
        name = name[:-len(ALL_PIXELS)]
    value = ev.get(name)
    return value if isinstance(value, (int, float)) else None


def aggregate(cells: list[dict]) -> list[dict]:
    """One row per (task, setting, generator, count) with mean ± std and the paired delta vs real_only."""
    base = {(c["task"], c["setting"], replicate(c)): c for c in cells if c["generator"] == REAL_ONLY}
    groups: dict[tuple, list] = {}
    for c in cells:
        groups.setdefault((c["task"], c["setting"], c["generator"], c["count"]), []).append(c)
    rows = []
    order = lambda kv: (kv[0][0], kv[0][1] != MAIN, kv[0][1], kv[0][2] != REAL_ONLY, kv[0][2], kv[0][3])
    for (task, setting, name, count), group in sorted(groups.items(), key=order):
        group = sorted(group, key=replicate)
        row = {"task": task, "setting": setting, "generator": name, "count": count,
               "seeds": [replicate(c) for c in group]}
        for m in TASK_METRICS[task]:
            row[m] = mean_std([_metric(c, m) for c in group])
            deltas = {}
            for c in group:
                b = base.get((task, setting, replicate(c)))
                if b is not None and _metric(c, m) is not None and _metric(b, m) is not None:
                    deltas[replicate(c)] = _metric(c, m) - _metric(b, m)
            row[f"delta_{m}"] = {**mean_std(deltas.values()), "per_seed": {str(k): v for k, v in deltas.items()}}
        row["steps"] = sorted({c.get("steps") for c in group if c.get("steps") is not None})
        row["cell_seconds"] = mean_std([c.get("cell_seconds") for c in group])
        rows.append(row)
    return rows


def generator_rows(cells: list[dict]) -> list[dict]:
    """Per generator (main training data): cost and generation metrics, mean ± std over seeds."""
    runs: dict[str, dict[int, dict]] = {}
    for c in cells:
        if c["generator"] != REAL_ONLY and c["setting"] == MAIN and c.get("generator_run"):
            runs.setdefault(c["generator"], {})[replicate(c)] = c["generator_run"]
    rows = []
    for name, by_seed in sorted(runs.items()):
        rs = list(by_seed.values())
        gm = [r.get("generation_metrics") or {} for r in rs]
        row = {"generator": name, "seeds": sorted(by_seed),
               "fit_seconds": mean_std([r.get("fit_seconds") for r in rs]),
               "generate_seconds": mean_std([r.get("generate_seconds") for r in rs]),
               "fit_generate_seconds": mean_std([r.get("fit_generate_seconds") for r in rs]),
               "peak_rss_mib": mean_std([r["peak_rss_kib"] / 1024 for r in rs if r.get("peak_rss_kib")]),
               "generated_samples": mean_std([r.get("generated_samples") for r in rs]),
               "samples_per_second": mean_std([r["generated_samples"] / r["generate_seconds"] for r in rs
                                               if r.get("generated_samples") and r.get("generate_seconds")])}
        for key in ("frechet_distance", "kid_mean", "ic_lpips"):  # "FID" only when the features are standard
            row[key] = mean_std([g.get(key) for g in gm])
        described = next((g for g in gm if g.get("extractor") or g.get("lpips")), {})
        row["extractor"], row["standard"] = described.get("extractor"), described.get("standard")
        row["frechet_name"], row["kid_name"] = described.get("frechet_name"), described.get("kid_name")
        row["lpips"] = described.get("lpips")
        row["metric_errors"] = sorted({g["error"] for g in gm if g.get("error")} |
                                      {g["skipped"] for g in gm if g.get("skipped")})
        br = [r.get("boundary_realism") or {} for r in rs]
        row["boundary_frechet"] = mean_std([b.get("boundary_frechet") for b in br])
        row["boundary_kid"] = mean_std([b.get("boundary_kid") for b in br])
        row["boundary_crops"] = next(({k: b.get(k) for k in ("crop", "per_image", "extractor")} for b in br
                                      if b.get("extractor")), None)
        row["base_model"] = next((r["base_model"] for r in rs if r.get("base_model")), None)
        row["inspection"] = inspection_row([r.get("inspection") or {} for r in rs])
        rows.append(row)
    return rows


def inspection_row(per_seed: list[dict]) -> dict:
    """Generation inspection numbers (`generate.inspection_summary`) pooled over seeds: sample and
    rejection counts by reason (sums), the requested masks' visible fraction (median, 10th
    percentile: means over seeds), accepted samples more than 5 % off fabric, placement retries."""
    got = [s for s in per_seed if s]
    if not got:
        return {}
    reasons: dict[str, int] = {}
    for s in got:
        for k, v in (s.get("rejected_by_reason") or {}).items():
            reasons[k] = reasons.get(k, 0) + int(v)

    def stat(key, q):
        return mean_std([(s.get(key) or {}).get(q) for s in got])

    return {"accepted": sum(s.get("accepted", 0) for s in got), "rejected": sum(s.get("rejected", 0) for s in got),
            "rejected_by_reason": reasons,
            "visible_median": stat("visible_fraction_requested", "median"),
            "visible_p10": stat("visible_fraction_requested", "p10"),
            "exported_visible_median": stat("visible_fraction_exported", "median"),
            "requested_off_fabric_max": max(((s.get("requested_off_fabric") or {}).get("max") or 0.0) for s in got),
            "accepted_over_5pct_off_fabric": sum(s.get("accepted_over_5pct_off_fabric", 0) for s in got),
            "placement_rejected_positions": sum(s.get("placement_rejected_positions", 0) for s in got),
            "fabric_matched": sum(s.get("fabric_matched", 0) for s in got), "placed": sum(s.get("placed", 0) for s in got)}


def paired_settings(cells: list[dict], task: str, setting_a: str, setting_b: str, metric: str,
                    evaluation: str = "all") -> list[dict]:
    """Per (generator, count): ``metric`` under setting a and b, and the paired (per seed) difference b − a."""
    by = {(c["setting"], c["generator"], c["count"], replicate(c)): c for c in cells if c["task"] == task}
    keys = sorted({(g, n) for s, g, n, _ in by if s == setting_b}, key=lambda k: (k[0] != REAL_ONLY, k))
    out = []
    for g, n in keys:
        seeds = sorted(sd for s, gg, nn, sd in by if (s, gg, nn) == (setting_b, g, n) and (setting_a, g, n, sd) in by)
        a = [_metric(by[(setting_a, g, n, sd)], metric, evaluation) for sd in seeds]
        b = [_metric(by[(setting_b, g, n, sd)], metric, evaluation) for sd in seeds]
        diff = [y - x for x, y in zip(a, b) if x is not None and y is not None]
        out.append({"generator": g, "count": n, "seeds": seeds, "a": mean_std(a), "b": mean_std(b),
                    "delta": mean_std(diff), "metric": metric, "evaluation": evaluation})
    return out


def label_fill(out: Path) -> dict | None:
    """Box fill of the real training labels with one box per component vs ``split_long``
    (:func:`defectfill.detect.dataset.box_fill_stats`), on the first seed's training pool."""
    grid_path = out / "grid.json"
    settings = json.loads(grid_path.read_text())["settings"] if grid_path.is_file() else {}
    split = (settings.get("label_noise") or {}).get("split_long")
    pools = sorted(out.glob("work/f*/main/pool/masks"))
    if not split or not pools:
        return None
    tile = int((settings.get("detector") or {}).get("tile", 256))
    masks = []
    for path in sorted(p for p in pools[0].iterdir() if p.is_file()):
        masks.append(read_mask(path))
    return {"pool": str(pools[0].parent), "tile": tile, "one_box_per_component": box_fill_stats(masks, tile),
            f"split_long{float(split):g}": box_fill_stats(masks, tile, float(split))}


def _per_type(cells: list[dict], setting: str, key: str, field: str) -> dict:
    """generator → defect type → mean over seeds of ``evaluations.all[key][type][field]`` (segmenter
    cells of ``setting``, each generator's largest count)."""
    best: dict[str, int] = {}
    for c in cells:
        if c["task"] == "segmenter" and c["setting"] == setting:
            best[c["generator"]] = max(best.get(c["generator"], 0), c["count"])
    out: dict[str, dict[str, list]] = {}
    for c in cells:
        if c["task"] != "segmenter" or c["setting"] != setting or c["count"] != best[c["generator"]]:
            continue
        for t, v in (((c.get("evaluations") or {}).get("all") or {}).get(key) or {}).items():
            out.setdefault(c["generator"], {}).setdefault(t, []).append(v[field])
    return {g: {t: float(np.mean(v)) for t, v in types.items()} for g, types in out.items()}


def per_type_ap(cells: list[dict], setting: str = MAIN) -> dict:
    """generator → defect type → mean pixel AP over seeds (segmenter, ``setting``, largest count)."""
    return _per_type(cells, setting, "pixel_ap_by_type", "ap")


def per_type_recall(cells: list[dict]) -> dict:
    """generator → defect type → mean tile recall@threshold over seeds (segmenter, main, largest count)."""
    return _per_type(cells, MAIN, "tile_recall@threshold_by_group", "recall")


# ----------------------------------------------------------------------------- paired statistics

CONTROLS = ("shade", "noise_blob")  # realism-free control generators (standard rows)
REFERENCE_ARMS = ("copy_paste", *CONTROLS)  # what a generator must beat to show realism


def family(setting: str) -> str:
    """The row a setting pools into: ``new_fabric`` for every ``new_<fabric>``, else the setting itself."""
    return "new_fabric" if setting.startswith(NEW_FABRIC) else setting


def cluster(cell: dict) -> str:
    """Which evaluation sources a cell's replicate shares with others: its fold, or its new fabric."""
    return cell["setting"] if cell["setting"].startswith(NEW_FABRIC) else f"f{cell.get('fold', 0)}"


def _records(cell: dict) -> dict | None:
    per = ((cell.get("evaluations") or {}).get("all") or {}).get("per_source")
    return {r["id"]: r for r in per} if per else None


def default_comparisons(generators: list[str]) -> dict[str, list[str]]:
    """Generator vs generator rows: every non-control generator vs copy-paste and each control present."""
    return {g: [r for r in REFERENCE_ARMS if r in generators and r != g] for g in generators
            if g != REAL_ONLY and g not in CONTROLS}


def comparison_pairs(names: list[str], compare: dict | None = None) -> list[tuple[str, str]]:
    """(generator, baseline) pairs of a setting's ``names``: each generator vs real-only, then
    :func:`default_comparisons` plus the extra pairs of ``compare`` (``stats.compare`` adds, it does not
    replace), each pair once."""
    pairs = [(g, REAL_ONLY) for g in names if g != REAL_ONLY and REAL_ONLY in names]
    comp = default_comparisons(names)
    for g, others in (compare or {}).items():
        comp[g] = list(dict.fromkeys([*comp.get(g, []), *others]))
    pairs += [(g, o) for g, others in comp.items() for o in others if g in names and o in names and g != o]
    return list(dict.fromkeys(pairs))


def _arms(cells: list[dict]) -> tuple[dict, dict]:
    """Each generator's largest count and its cells by (generator, setting, fold, seed)."""
    top: dict[str, int] = {}
    for c in cells:
        top[c["generator"]] = max(top.get(c["generator"], 0), c["count"])
    return top, {(c["generator"], c["setting"], c.get("fold", 0), c["seed"]): c for c in cells
                 if c["count"] == top[c["generator"]]}


def _replicates(arms: dict, g: str, base: str) -> list[dict]:
    """Paired replicates of ``g`` vs ``base``: ``{cluster, a, b, label}`` per (setting, fold, seed) in both."""
    reps = []
    for (name, setting, fold, sd), c in sorted(arms.items()):
        b = arms.get((base, setting, fold, sd))
        if name == g and b is not None:
            reps.append({"cluster": cluster(c), "a": _records(b), "b": _records(c),
                         "label": f"{setting}-f{fold}-s{sd}"})
    return reps


def subgroup_rows(cells: list[dict], by: str = "type", task: str = "segmenter", n_boot: int = 2000,
                  alpha: float = 0.05, seed: int = 0, resample_replicates: bool = True) -> list[dict]:
    """Where a generator's Δ pixel AP vs real_only comes from: per setting family, generator and value of
    the evaluation sources' ``by`` field (``type``: defect type; ``fabric``), the paired bootstrap of
    :func:`stats.compare` on each replicate's records restricted to that group's defect sources plus the
    good sources (of the same fabric when ``by="fabric"``); replicates without such a defect source are
    left out."""
    cells = [c for c in cells if c["task"] == task and _records(c) is not None]
    rows = []
    for fam in sorted({family(c["setting"]) for c in cells}, key=lambda f: (f != MAIN, f)):
        top, arms = _arms([c for c in cells if family(c["setting"]) == fam])
        if REAL_ONLY not in top:
            continue
        for g in sorted(n for n in top if n != REAL_ONLY):
            reps = _replicates(arms, g, REAL_ONLY)
            groups = sorted({r.get(by) for rep in reps for r in rep["a"].values()
                             if r["type"] != "good" and r.get(by)})
            for value in groups:
                def keep(r, value=value):
                    return r.get(by) == value if r["type"] != "good" else by != "fabric" or r.get("fabric") == value

                sub = [{"cluster": rep["cluster"], **{arm: {i: r for i, r in rep[arm].items() if keep(r)}
                                                      for arm in ("a", "b")}} for rep in reps]
                sub = [r for r in sub if any(x["type"] != "good" for x in r["a"].values())]
                if not sub:
                    continue
                res = stats.compare(sub, "pixel_ap", n_boot=n_boot, seed=seed, alpha=alpha,
                                    resample_replicates=resample_replicates)
                n_def = len({i for r in sub for i, x in r["a"].items() if x["type"] != "good"})
                rows.append({"setting": fam, "generator": g, "baseline": REAL_ONLY, "by": by, "group": value,
                             "defect_sources": n_def, **{k: v for k, v in res.items() if k != "deltas"}})
    return rows


def influence_rows(cells: list[dict], task: str = "segmenter", top: int = 8) -> dict[str, list[dict]]:
    """Which evaluation images decide the Δ pixel AP vs real_only: per setting family, the ``top`` sources
    with the most negative mean leave-one-out influence (:func:`stats.pixel_ap_influence`) over every
    generator and replicate they are evaluated in, with their type, fabric and each generator's mean."""
    cells = [c for c in cells if c["task"] == task and _records(c) is not None]
    out = {}
    for fam in sorted({family(c["setting"]) for c in cells}, key=lambda f: (f != MAIN, f)):
        top_count, arms = _arms([c for c in cells if family(c["setting"]) == fam])
        if REAL_ONLY not in top_count:
            continue
        per: dict[str, dict[str, list[float]]] = {}
        info: dict[str, dict] = {}
        for g in sorted(n for n in top_count if n != REAL_ONLY):
            for rep in _replicates(arms, g, REAL_ONLY):
                for sid, v in stats.pixel_ap_influence(rep["a"], rep["b"]).items():
                    if math.isfinite(v):
                        per.setdefault(sid, {}).setdefault(g, []).append(v)
                        info[sid] = {"type": rep["a"][sid]["type"], "fabric": rep["a"][sid].get("fabric")}
        rows = [{"source": sid, **info[sid], "mean": float(np.mean([x for v in gens.values() for x in v])),
                 "by_generator": {g: float(np.mean(v)) for g, v in gens.items()}} for sid, gens in per.items()]
        out[fam] = sorted(rows, key=lambda r: r["mean"])[:top]
    return out


def paired_rows(cells: list[dict], task: str = "segmenter", compare: dict | None = None, n_boot: int = 2000,
                alpha: float = 0.05, seed: int = 0, resample_replicates: bool = True) -> list[dict]:
    """Per setting family, generator (largest count) and metric: the paired Δ vs real_only over every
    (fold, seed) replicate present in both arms, its bootstrap CI (evaluation sources resampled per
    cluster, the same draw for both arms; with ``resample_replicates`` the cluster's seeds too), the
    Wilcoxon signed-rank p-value and the verdict; the same
    for the generator-vs-generator pairs of ``compare`` (Δ = generator − other)."""
    metrics = TASKS[task].stat_metrics
    cells = [c for c in cells if c["task"] == task and _records(c) is not None]
    rows = []
    for fam in sorted({family(c["setting"]) for c in cells}, key=lambda f: (f != MAIN, f)):
        top, arms = _arms([c for c in cells if family(c["setting"]) == fam])
        names = sorted(top)
        pairs = comparison_pairs(names, compare)
        for g, base in pairs:
            reps = _replicates(arms, g, base)
            if not reps:
                continue
            for m in metrics:
                res = stats.compare([{k: r[k] for k in ("cluster", "a", "b")} for r in reps], m, n_boot=n_boot,
                                    seed=seed, alpha=alpha, resample_replicates=resample_replicates)
                rows.append({"task": task, "setting": fam, "generator": g, "baseline": base, "count": top[g],
                             "metric": m, "replicates": [r["label"] for r in reps],
                             "clusters": len({r["cluster"] for r in reps}), **res})
    return rows


def forest_plots(rows: list[dict], out: Path, metric: str = "pixel_ap") -> dict[str, str]:
    """One forest plot per setting family (``forest_<setting>.png``): every paired Δ of ``metric`` with its CI."""
    paths = {}
    for fam in sorted({r["setting"] for r in rows}):
        sel = [r for r in rows if r["setting"] == fam and r["metric"] == metric]
        if not sel:
            continue
        items = [{"label": f"{r['generator']} − {r['baseline']}", "mean": r["mean"], "ci_low": r["ci_low"],
                  "ci_high": r["ci_high"], "verdict": r["verdict"]} for r in sel]
        path = stats.forest_plot(items, out / f"forest_{fam}.png",
                                 title=f"{fam}: paired Δ {metric}, 95 % CI over {sel[0]['n_replicates']} replicates")
        paths[fam] = Path(path).name
    return paths


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(rows: list[dict], task: str, path: Path) -> Path | None:
    rows = [r for r in rows if r["task"] == task and r["setting"] == MAIN]
    if not rows:
        return None
    plt = _plt()
    metric = HEADLINE[task]
    labels = [r["generator"] if r["generator"] == REAL_ONLY else f"{r['generator']}\nn={r['count']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    ax.bar(range(len(rows)), [r[metric]["mean"] for r in rows], yerr=[r[metric]["std"] for r in rows], capsize=4,
           color=["grey" if r["generator"] == REAL_ONLY else "C0" for r in rows])
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{task}: {metric} by generator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def recall_chart(recall: dict, path: Path) -> Path | None:
    types = sorted({t for v in recall.values() for t in v})
    if not types:
        return None
    plt = _plt()
    gens = sorted(recall, key=lambda g: (g != REAL_ONLY, g))
    width = 0.8 / len(gens)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(types) + 2), 3.8))
    for i, g in enumerate(gens):
        ax.bar([k + i * width for k in range(len(types))], [recall[g].get(t, np.nan) for t in types], width,
               label=g, color="grey" if g == REAL_ONLY else f"C{i}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(types))], types, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("tile recall @ val threshold")
    ax.set_title("Segmenter recall per defect type (evaluation tiles)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def galleries(cells: list[dict], out: Path, rows: int = 6) -> list[str]:
    """Per setting family, a side-by-side sheet (``gallery_<family>.png``): every generator on the same clean
    images and masks, from the family's first (setting, fold, seed) replicate with generated samples."""
    by_rep: dict[tuple, dict[str, str]] = {}
    for c in sorted(cells, key=lambda c: c["generator"]):
        run = c.get("generator_run") or {}
        if run.get("generated_dir") and Path(run["generated_dir"]).is_dir():
            key = (family(c["setting"]) != MAIN, family(c["setting"]), c["setting"], c.get("fold", 0), c["seed"])
            by_rep.setdefault(key, {})[c["generator"]] = run["generated_dir"]
    paths, done = [], set()
    for key, datasets in sorted(by_rep.items()):
        if key[1] in done:
            continue
        done.add(key[1])
        path = side_by_side_sheet(datasets, out / f"gallery_{key[1]}.png", max_rows=rows)
        if path is not None:
            paths.append(Path(path).name)
    return paths


# ----------------------------------------------------------------------------- markdown


def _fmt(d: dict | None, digits: int = 3) -> str:
    if not d or d["n"] == 0 or not math.isfinite(d["mean"]):
        return "–"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _per_seed(delta: dict) -> str:
    """Paired deltas per seed and how many are positive, e.g. ``+0.012, -0.003 (1/2 > 0)``."""
    per = delta.get("per_seed") or {}
    if not per:
        return "–"
    vals = [per[k] for k in sorted(per)]
    return ", ".join(f"{v:+.3f}" for v in vals) + f" ({sum(v > 0 for v in vals)}/{len(vals)} > 0)"


def _table(rows: list[dict], task: str, setting: str) -> list[str]:
    rows = [r for r in rows if r["task"] == task and r["setting"] == setting]
    if not rows:
        return []
    metrics = TASK_METRICS[task]
    head = metrics[:4]
    lines = ["| generator | count | seeds | " + " | ".join(head) + " | " + " | ".join(f"Δ {m}" for m in head[:2])
             + f" | Δ {head[0]} per seed | steps |", "|" + "---|" * (len(head) + 7)]
    for r in rows:
        lines.append(f"| {r['generator']} | {r['count']} | {len(r['seeds'])} | "
                     + " | ".join(_fmt(r[m]) for m in head) + " | "
                     + " | ".join(_fmt(r[f"delta_{m}"]) for m in head[:2])
                     + f" | {_per_seed(r[f'delta_{head[0]}']) if r['generator'] != REAL_ONLY else '–'} | {r['steps']} |")
    return lines


def _type_table(by_generator: dict) -> list[str]:
    types = sorted({t for v in by_generator.values() for t in v})
    if not types:
        return []
    gens = sorted(by_generator, key=lambda g: (g != REAL_ONLY, g))
    lines = ["| generator | " + " | ".join(types) + " |", "|" + "---|" * (len(types) + 1)]
    for g in gens:
        lines.append(f"| {g} | " + " | ".join(f"{by_generator[g][t]:.3f}" if t in by_generator[g] else "–"
                                              for t in types) + " |")
    return lines


def write_report(output_dir: str | Path, stats_settings: dict | None = None) -> dict:
    """results.json, results.md and the figures from the finished cells of ``output_dir``;
    ``stats_settings``: the profile's ``stats`` (n_boot, alpha, compare, resample_seeds)."""
    out = Path(output_dir)
    settings_ = stats_settings or {}
    cells, errors = load_cells(out)
    boot = {"n_boot": int(settings_.get("n_boot", 2000)), "alpha": float(settings_.get("alpha", 0.05)),
            "resample_replicates": bool(settings_.get("resample_seeds", True))}
    paired = paired_rows(cells, compare=settings_.get("compare"), **boot)
    forest = forest_plots(paired, out)
    subgroups = {by: subgroup_rows(cells, by, **boot) for by in ("type", "fabric")}
    deciders = influence_rows(cells)
    rows = aggregate(cells)
    gens = generator_rows(cells)
    settings = sorted({c["setting"] for c in cells})
    split_settings = [s for s in settings if s.startswith("split_long")]
    without = [s for s in settings if s.startswith("without_")]
    label_noise = {s: [row for m in ("map50", "recall") for row in paired_settings(cells, "rtdetr", MAIN, s, m)]
                   for s in split_settings}
    leave_out = {}
    for s in without:
        t = s[len("without_"):]
        leave_out[s] = {task: {m: paired_settings(cells, task, MAIN, s, m, f"type_{t}")
                               for m in (RECALL[task], HEADLINE[task])} for task in SEEN_UNSEEN_TASKS}
    recall = per_type_recall(cells)
    new_fabric = [s for s in settings if s.startswith("new_")]
    type_ap = {s: per_type_ap(cells, s) for s in [MAIN, *new_fabric]}
    fill = label_fill(out)
    eval_kinds = {json.dumps({k: v for k, v in c["eval_source"].items() if k not in ("eval_ids", "fold")}, sort_keys=True)
                  for c in cells}
    rt = [r for r in rows if r["task"] == "rtdetr" and r["setting"] == MAIN]
    max_map50 = max((r["map50"]["mean"] for r in rt if math.isfinite(r["map50"]["mean"])), default=float("nan"))
    figures = {"segmenter": bar_chart(rows, "segmenter", out / "segmenter_pixel_ap.png"),
               "rtdetr": bar_chart(rows, "rtdetr", out / "rtdetr_map50.png"),
               "recall_per_type": recall_chart(recall, out / "recall_per_type.png")}
    try:
        gallery = galleries(cells, out)
    except Exception as exc:  # a figure must not cost the tables
        gallery, figures["gallery_error"] = [], f"{type(exc).__name__}: {exc}"
    report = {"cells": {c["cell"]: {k: c[k] for k in ("task", "setting", "generator", "count", "seed")}
                        | {"metrics": {m: _metric(c, m) for m in TASK_METRICS[c["task"]]}} for c in cells},
              "paired": [{k: v for k, v in r.items()} for r in paired], "forest_plots": forest,
              "subgroups": subgroups, "deciders": deciders,
              "replicates": replicate_coverage(cells),
              "rows": rows, "generators": gens, "label_noise": label_noise, "label_fill": fill,
              "leave_out": leave_out, "new_fabric": new_fabric, "pixel_ap_per_type": type_ap,
              "recall_per_type": recall, "errors": [{k: e.get(k) for k in ("cell", "error")} for e in errors],
              "eval_source": [json.loads(e) for e in sorted(eval_kinds)], "fallbacks": sidecar_fallbacks(cells),
              "rtdetr_max_map50": max_map50, "std": "sample std over seeds (ddof=1)",
              "figures": {k: (Path(v).name if isinstance(v, Path) else v) for k, v in figures.items() if v},
              "galleries": gallery}
    atomic_write_text(out / "results.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "results.md", "\n".join(_markdown(report)) + "\n")
    return report


def replicate_coverage(cells: list[dict]) -> dict:
    """Per setting family: replicates (fold x seed, or fabric x seed), folds, seeds, threads recorded, and
    per fitted generator ``fits``: ``{generator: {"fits", "replicates"}}`` (distinct checkpoints its cells
    used): fewer fits than replicates means a fit is reused across seeds, so those seeds vary the
    generated samples and the downstream model but not the generator's weights."""
    out: dict[str, dict] = {}
    for c in cells:
        d = out.setdefault(family(c["setting"]), {"replicates": set(), "clusters": set(), "seeds": set(),
                                                  "threads": set(), "fits": {}})
        d["replicates"].add(f"{c['setting']}-{replicate(c)}")
        d["clusters"].add(cluster(c))
        d["seeds"].add(c["seed"])
        d["threads"].add((c.get("runtime") or {}).get("torch_threads"))
        ckpt = (c.get("generator_run") or {}).get("checkpoint")
        if ckpt:
            f = d["fits"].setdefault(c["generator"], (set(), set()))
            f[0].add(ckpt)
            f[1].add(f"{c['setting']}-{replicate(c)}")
    return {k: {"replicates": len(v["replicates"]), "clusters": len(v["clusters"]), "seeds": sorted(v["seeds"]),
                "torch_threads": sorted(t for t in v["threads"] if t is not None),
                "fits": {g: {"fits": len(f[0]), "replicates": len(f[1])} for g, f in sorted(v["fits"].items())}}
            for k, v in out.items()}


def _fits_markdown(fits: dict) -> str:
    """One sentence: how many fits each generator's replicates rest on."""
    if not fits:
        return ""
    parts = [f"{g} {f['fits']} fit{'s' if f['fits'] != 1 else ''} for {f['replicates']} replicates"
             for g, f in fits.items()]
    reused = [g for g, f in fits.items() if f["fits"] < f["replicates"]]
    tail = (f" Where fits are fewer than replicates ({', '.join(reused)}), a fit serves several seeds: those "
            "seeds vary the generated samples and the segmenter, not the generator's weights, and the interval does not "
            "cover the variance between refits on the same data.") if reused else " Every replicate has its own fit."
    return "Generator fits: " + "; ".join(parts) + "." + tail


def verdict_summary(paired: list[dict], metric: str = "pixel_ap") -> list[str]:
    """A compact Markdown table: per setting family and generator, Δ ``metric`` [95 % CI] and the verdict
    against real-only, each control and copy-paste (the rows of :func:`paired_rows`)."""
    rows = [r for r in paired if r["metric"] == metric]
    if not rows:
        return []
    bases = [b for b in (REAL_ONLY, *REFERENCE_ARMS) if any(r["baseline"] == b for r in rows)]
    lines = ["| setting | generator | n | " + " | ".join(f"Δ vs {b}" for b in bases) + " |",
             "|---" * (len(bases) + 3) + "|"]
    short = {"better": "**better**", "worse": "**worse**", "not distinguishable": "n.d."}
    for fam in dict.fromkeys(r["setting"] for r in rows):
        for g in dict.fromkeys(r["generator"] for r in rows if r["setting"] == fam):
            cell = {r["baseline"]: r for r in rows if r["setting"] == fam and r["generator"] == g}
            n = cell.get(REAL_ONLY, next(iter(cell.values())))["n_replicates"]
            lines.append(f"| {fam} | {g} | {n} | " + " | ".join(
                f"{cell[b]['mean']:+.3f} [{cell[b]['ci_low']:+.3f}, {cell[b]['ci_high']:+.3f}] "
                f"{short[cell[b]['verdict']]}" if b in cell else "–" for b in bases) + " |")
    return lines


def _paired_markdown(report: dict) -> list[str]:
    rows = report.get("paired") or []
    if not rows:
        return []
    lines = ["## Paired statistics: which generator helps, with 95 % confidence intervals", "",
             "Δ = generator − baseline on the same evaluation images, fold and seed (a replicate); mean over "
             "replicates. CI: percentile bootstrap that resamples evaluation source images within each fold "
             "(defect and good images separately; the same draw for both arms and every seed of the fold) and, "
             "unless `stats.resample_seeds: false`, the fold's seeds too (two-stage bootstrap: the interval "
             "covers training variance, not only the choice of evaluation images). "
             "p: two-sided Wilcoxon signed-rank test over the replicates' Δ. Verdict: `better` when the CI lies "
             "above 0, `worse` below, else `not distinguishable`. image/region recall@fa5: recall of defect images "
             "/ defect regions at the score threshold that gives at most 5 % false alarms on the fold's good "
             "images. A generator adds realism only where it beats both realism-free controls (`shade`, "
             "`noise_blob`); where it does not, its gain is more positive pixels in the right places.", "",
             "Summary, pixel AP (n.d. = not distinguishable):", "", *verdict_summary(rows), ""]
    cov = report.get("replicates") or {}
    for fam in sorted({r["setting"] for r in rows}, key=lambda f: (f != MAIN, f)):
        c = cov.get(fam, {})
        lines += [f"### {fam}", "",
                  f"{c.get('replicates', '?')} replicates over {c.get('clusters', '?')} evaluation clusters, seeds "
                  f"{c.get('seeds')}, torch threads per cell {c.get('torch_threads')}. "
                  + _fits_markdown(c.get("fits") or {}), ""]
        if fam in (report.get("forest_plots") or {}):
            lines += [f"![forest {fam}]({report['forest_plots'][fam]})", ""]
        lines += ["| generator | vs | metric | n | Δ mean | 95 % CI | p (Wilcoxon) | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["setting"] == fam):
            lines.append(f"| {r['generator']} | {r['baseline']} | {r['metric']} | {r['n_replicates']} | "
                         f"{r['mean']:+.4f} | [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['wilcoxon_p']:.3g} | "
                         f"**{r['verdict']}** |")
        lines.append("")
    return lines


def _subgroup_markdown(report: dict) -> list[str]:
    lines = []
    for by, rows in (report.get("subgroups") or {}).items():
        if not rows:
            continue
        lines += [f"## Where the Δ comes from: pixel AP vs real-only per {'defect type' if by == 'type' else by}",
                  "",
                  f"Each evaluation replicate restricted to the defect images of one {by} (and the good images"
                  + (" of that fabric" if by == "fabric" else "") + "); paired Δ mean and 95 % CI as above "
                  "(+ better, − worse, blank: not distinguishable); in brackets the number of defect images.", ""]
        for fam in dict.fromkeys(r["setting"] for r in rows):
            sel = [r for r in rows if r["setting"] == fam]
            groups = list(dict.fromkeys(r["group"] for r in sel))
            n = {r["group"]: r["defect_sources"] for r in sel}
            lines += [f"### {fam}", "", "| generator | " + " | ".join(f"{g} ({n[g]})" for g in groups) + " |",
                      "|---" * (len(groups) + 1) + "|"]
            for gen in dict.fromkeys(r["generator"] for r in sel):
                cell = {r["group"]: r for r in sel if r["generator"] == gen}
                mark = {"better": " +", "worse": " −"}
                lines.append(f"| {gen} | " + " | ".join(
                    f"{cell[g]['mean']:+.3f} [{cell[g]['ci_low']:+.3f}, {cell[g]['ci_high']:+.3f}]"
                    f"{mark.get(cell[g]['verdict'], '')}" if g in cell else "–" for g in groups) + " |")
            lines.append("")
    return lines


def _decider_markdown(report: dict) -> list[str]:
    found = {f: r for f, r in (report.get("deciders") or {}).items() if r}
    if not found:
        return []
    lines = ["## Which evaluation images decide the Δ", "",
             "Leave-one-out influence of each evaluation image on the replicate's Δ pixel AP vs real-only "
             "(Δ with it − Δ without it), averaged over the replicates that evaluate it; the most negative "
             "first (where the generators lose). Per generator in the last column.", ""]
    for fam, rows in found.items():
        lines += [f"### {fam}", "", "| image | type | fabric | mean influence | per generator |", "|---|---|---|---|---|"]
        lines += [f"| {r['source']} | {r['type']} | {r['fabric']} | {r['mean']:+.4f} | "
                  + ", ".join(f"{g} {v:+.3f}" for g, v in sorted(r["by_generator"].items())) + " |" for r in rows]
        lines.append("")
    return lines


def _markdown(report: dict) -> list[str]:
    rows, lines = report["rows"], ["# Benchmark results", ""]
    for e in report["eval_source"]:
        if e.get("kind") == "new_fabric":
            lines.append(f"New fabric `{e['target']}`: evaluated on its defect images in `{e['path']}` "
                         "(none of them trains or fits anything).")
        elif e.get("kind") == "cross_validation":
            lines.append(f"Evaluation data: {e['folds']}-fold cross-validation by source over data_dir (fold seed "
                         f"{e['seed']}): every source image is evaluated once per seed, in its fold, by models and "
                         "generators that never saw it. Folds are stratified by defect type and fabric.")
        elif e.get("kind") == "eval_data":
            lines.append(f"Evaluation data: the separate folder `{e['path']}` (used only for final evaluation).")
        else:
            lines.append(f"Evaluation data: a HELD-OUT split of data_dir by source (fraction {e.get('fraction')}, "
                         f"split seed {e.get('seed')}; the same images for every seed). "
                         "No separate eval_data was given.")
    for g in report["galleries"]:
        lines += ["", f"**{g[len('gallery_'):-len('.png')]}**, side by side on the same clean images and masks "
                  f"(columns: clean, mask, the real defect whose mask shape was reused, then each generator): ![gallery]({g})"]
    lines += [""] + _paired_markdown(report) + _subgroup_markdown(report) + _decider_markdown(report)
    lines += ["## Tables per setting", "", "Std = sample std over replicates (fold x seed, ddof=1). Δ = paired "
              "difference vs real_only of the same replicate (same task and setting). Every cell of a task has the "
              "same training budget (steps column).", ""]
    if report["errors"]:
        lines += [f"**{len(report['errors'])} cell(s) failed** (rerun the command to retry them):", ""]
        lines += [f"- `{e['cell']}`: {str(e['error']).splitlines()[0][:200]}" for e in report["errors"]] + [""]
    lines += ["## Segmenter (pixel AP on fabric, macro per-type AP, pixel AP over all pixels, tile AUROC)", "",
              "Pixel metrics count fabric and defect pixels (off-fabric background left out); "
              "`pixel_ap_all_pixels` is the same over every pixel. `pixel_ap_macro` = mean over defect types of "
              "the AP of that type's pixels against all negatives, so one type cannot decide the ranking.", ""]
    lines += _table(rows, "segmenter", MAIN) or ["(no segmenter cells)"]
    if report["pixel_ap_per_type"].get(MAIN):
        lines += ["", "Pixel AP per defect type (largest count per generator, mean over seeds):", ""]
        lines += _type_table(report["pixel_ap_per_type"][MAIN])
    for setting in report.get("new_fabric", []):
        target = setting[len("new_"):]
        lines += ["", f"## New fabric `{target}` (leave-one-fabric-out)", "",
                  f"None of `{target}`'s defect images is used for training or fitting; its clean images are. "
                  f"Real-only trains on the other fabrics' defects plus `{target}`'s clean images; generators fit on "
                  f"the other fabrics and synthesise onto half of `{target}`'s clean images. Evaluated on "
                  f"`{target}`'s real defect images and the other half of its clean images.", ""]
        for task in TASK_METRICS:
            lines += _table(rows, task, setting)
        if report["pixel_ap_per_type"].get(setting):
            lines += ["", "Pixel AP per defect type:", ""] + _type_table(report["pixel_ap_per_type"][setting])
    lines += ["", "## RT-DETR (mAP50, mAP50-95, precision and recall at IoU 0.5)", ""]
    lines += _table(rows, "rtdetr", MAIN) or ["(no RT-DETR cells)"]
    m = report["rtdetr_max_map50"]
    if isinstance(m, float) and math.isfinite(m) and m < NEAR_ZERO_MAP50:
        lines += ["", f"**RT-DETR stays near zero at this scale** (best mean mAP50 {m:.3f} < {NEAR_ZERO_MAP50}): "
                  "with this little data and this budget it does not learn the defects, so its rows cannot rank the "
                  "generators; read the segmenter's numbers above. bench/results/rtdetr_learning_curve shows the "
                  "budget it needs (configs/benchmark/aitex_gpu.yaml runs it)."]
    # column titles name the features ("FID"/"KID" only for the standard TF-FID Inception)
    fd_names = {g.get("frechet_name") for g in report["generators"] if g.get("frechet_name")}
    kid_names = {g.get("kid_name") for g in report["generators"] if g.get("kid_name")}
    fd_title = fd_names.pop() if len(fd_names) == 1 else "Fréchet distance (features: see notes)"
    kid_title = kid_names.pop() if len(kid_names) == 1 else "KID (features: see notes)"
    lines += ["", "## Generators: cost and generation metrics (main training data)", "",
              f"| generator | seeds | samples | fit s | generate s | samples/s | peak RSS MiB | {fd_title} | {kid_title} | "
              "IC-LPIPS (mask) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for g in report["generators"]:
        lines.append(f"| {g['generator']} | {len(g['seeds'])} | {_fmt(g['generated_samples'], 0)} | "
                     f"{_fmt(g['fit_seconds'], 1)} | {_fmt(g['generate_seconds'], 1)} | "
                     f"{_fmt(g.get('samples_per_second'), 2)} | {_fmt(g['peak_rss_mib'], 0)} | "
                     f"{_fmt(g['frechet_distance'], 2)} | {_fmt(g['kid_mean'], 4)} | {_fmt(g['ic_lpips'], 4)} |")
    lines += ["", "Time and memory: fit + generate in a child process per generator and seed; peak RSS is that "
              "process's own peak (VmHWM; runs before 2026-12-04 recorded `ru_maxrss` from os.wait4, which on Linux "
              "includes the benchmark process's high-water mark at fork, so those rows read too high). "
              "Fréchet distance / KID: defect-centred crops of the generated samples vs the real training defects; "
              "IC-LPIPS inside the masks."]
    for g in report["generators"]:
        notes = []
        if g["extractor"]:
            caveat = "" if g["standard"] or "not" in g["extractor"].lower() else \
                " (not the standard Inception network: not comparable with published FID/KID)"
            names = f"{g.get('frechet_name') or 'Fréchet distance'} / {g.get('kid_name') or 'KID'}"
            notes.append(f"{names}: {g['extractor']}{caveat}")
        if g["lpips"]:
            notes.append(f"IC-LPIPS: {g['lpips']}")
        if g["metric_errors"]:
            notes.append("metrics: " + "; ".join(g["metric_errors"]))
        if g["base_model"]:
            notes.append(f"base model: {g['base_model']['note']}")
        if notes:
            lines.append(f"- {g['generator']}: " + " | ".join(notes))
    inspected = [g for g in report["generators"] if g.get("inspection")]
    if inspected:
        lines += ["", "## Generated samples: placement and labels", "",
                  "Labels are the requested mask ∩ pixels that visibly changed (change > max(floor, k × the clean "
                  "fabric's fine-texture std)); samples whose visible fraction is too low are rejected. Summed over "
                  "seeds; visible fractions are of the requested masks (median / 10th percentile, mean over seeds).", "",
                  "| generator | accepted | rejected (by reason) | visible fraction median | p10 | exported mask "
                  "visible | accepted > 5 % off fabric | max requested off fabric | placements refused | same "
                  "fabric |", "|---|---|---|---|---|---|---|---|---|---|"]
        for g in inspected:
            i = g["inspection"]
            why = ", ".join(f"{k} {v}" for k, v in sorted(i["rejected_by_reason"].items())) or "-"
            lines.append(f"| {g['generator']} | {i['accepted']} | {i['rejected']} ({why}) | "
                         f"{_fmt(i['visible_median'])} | {_fmt(i['visible_p10'])} | {_fmt(i['exported_visible_median'])} | "
                         f"{i['accepted_over_5pct_off_fabric']} | {i['requested_off_fabric_max']:.3f} | "
                         f"{i['placement_rejected_positions']} | {i['fabric_matched']}/{i['placed']} |")
    for setting, tables in report["label_noise"].items():
        lines += ["", f"## Open question 1: label noise, RT-DETR trained with `{setting}` boxes vs one box per "
                  "component", "", "Evaluation labels are always one box per component.", "",
                  "| generator | count | metric | one box per component | split | Δ (split − one box) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['generator']} | {r['count']} | {r['metric']} | {_fmt(r['a'])} | {_fmt(r['b'])} | "
                  f"{_fmt(r['delta'])} |" for r in tables]
        fill = report.get("label_fill") or {}
        if setting in fill:
            one, split = fill["one_box_per_component"], fill[setting]
            lines += ["", f"Label noise in the real training labels themselves ({fill['tile']} px tiles, "
                      f"`{fill['pool']}`): box fill = defect pixels / box area.", "",
                      "| labels | boxes | mean fill | median fill | 10th percentile |", "|---|---|---|---|---|"]
            lines += [f"| {name} | {st['boxes']} | {st['mean_fill']:.3f} | {st['median_fill']:.3f} | "
                      f"{st['p10_fill']:.3f} |" for name, st in (("one box per component", one), (setting, split))
                      if st["boxes"]]
    for setting, tasks in report["leave_out"].items():
        t = setting[len("without_"):]
        lines += ["", f"## Open question 2: unknown defect type `{t}` (left out of generation and training)", "",
                  f"Evaluated on the evaluation images of type `{t}` only. 'seen' = the main setting (type in "
                  "training), 'unseen' = trained without it.", "",
                  "| task | generator | count | metric | seen | unseen | Δ (unseen − seen) |",
                  "|---|---|---|---|---|---|---|"]
        for task, by_metric in tasks.items():
            for metric, tables in by_metric.items():
                lines += [f"| {task} | {r['generator']} | {r['count']} | {metric} | {_fmt(r['a'])} | {_fmt(r['b'])} | "
                          f"{_fmt(r['delta'])} |" for r in tables]
    for setting in sorted({r["setting"] for r in rows if r["task"] == "openset"}):
        t = setting[len("without_"):]
        lines += ["", f"## Unknown defect type `{t}` answered with DFC (open-set classification)", "",
                  f"DFC (DGT's open-set classifier: frozen ImageNet EfficientNet-Lite0 features, an embedding + "
                  f"classifier head, OpenMax recalibration with per-class Weibull tails via scipy) trained on the "
                  f"real defect crops of the known types (+ each generator's samples, which never saw `{t}`); its "
                  f"unknown threshold is chosen on its training crops. Scored on the evaluation images: `{t}` is the "
                  "unknown class. novel_flagged = fraction of `{t}` defects flagged unknown; known_false_unknown = "
                  "known-type defects flagged unknown; AUROC of the unknown score (known vs `{t}`).".replace("{t}", t),
                  ""]
        lines += _table(rows, "openset", setting)
    fusion = [g for g in report["generators"] if g.get("boundary_frechet", {}).get("n")]
    if fusion:
        seg = {r["generator"]: r for r in rows if r["task"] == "segmenter" and r["setting"] == MAIN}
        about = next((g["boundary_crops"] for g in fusion if g.get("boundary_crops")), {}) or {}
        lines += ["", "## The fusion question: boundary realism and downstream delta", "",
                  "Does a single-stage generator (R3GAN: clean crop + mask + class → defect, RpGAN + R1 + R2 only, no "
                  "fusion network) match the Multistage GAN's explicit fusing network where the defect meets the "
                  f"fabric? Boundary Fréchet / KID: {about.get('crop')} px crops centred on {about.get('per_image')} "
                  "points of each mask's outline (source scale), generated vs the real training defects, on "
                  f"{about.get('extractor')}. Lower = closer to real seams. Same seeds as the tables above.", "",
                  "| generator | seeds | boundary Fréchet | boundary KID | segmenter Δ pixel AP | per seed |",
                  "|---|---|---|---|---|---|"]
        for g in fusion:
            r = seg.get(g["generator"])
            delta = r["delta_pixel_ap"] if r else None
            lines.append(f"| {g['generator']} | {len(g['seeds'])} | {_fmt(g['boundary_frechet'], 2)} | "
                         f"{_fmt(g['boundary_kid'], 4)} | {_fmt(delta)} | {_per_seed(delta) if delta else '–'} |")
    lines += ["", "## Fallbacks (one sidecar per generator)", ""]
    for name, found in sorted(report["fallbacks"].items()):
        if found is not None:
            lines.append(f"- {name}: " + ("; ".join(found) if found else "no LPIPS/VGG fallback recorded"))
    figs = report["figures"]
    lines += ["", "## Figures", ""]
    for key in ("segmenter", "rtdetr", "recall_per_type"):
        if key in figs:
            lines.append(f"![{key}]({figs[key]})")
    return lines
