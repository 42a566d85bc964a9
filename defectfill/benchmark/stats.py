"""Statistics for the benchmark: binned pixel AP, recall at a fixed false-alarm rate, paired cluster
bootstrap, Wilcoxon signed-rank test, verdicts and forest plots. Pure numpy / scipy (matplotlib for the plot).

A cell stores, per evaluation source image, a record ``{"id", "type" ("good" or the defect type),
"fabric", "pos_hist", "neg_hist", "image_score", "region_scores"}``; the histograms count defect /
non-defect pixel probabilities in ``B`` uniform bins on [0, 1] (see :func:`score_histogram`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

METRICS = ("pixel_ap", "image_recall@fa5", "region_recall@fa5")
FALSE_ALARM_RATE = 0.05


def score_histogram(scores, bins: int = 1024) -> np.ndarray:
    """Counts of ``scores`` in ``bins`` uniform bins on [0, 1]: bin i = [i/B, (i+1)/B), scores clipped
    to [0, 1], 1.0 in the last bin. Scores must be finite."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise ValueError("score_histogram: scores must be finite")
    idx = np.minimum((np.clip(s, 0.0, 1.0) * bins).astype(np.int64), bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def _binned_ap(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Binned AP along the last axis (any leading batch shape); nan where there are no positives."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    p_desc = pos[..., ::-1]
    tp = np.cumsum(p_desc, axis=-1)
    called = tp + np.cumsum(neg[..., ::-1], axis=-1)
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    total = tp[..., -1]
    ap = (p_desc * precision).sum(axis=-1)
    return np.divide(ap, total, out=np.full_like(ap, np.nan), where=total > 0)


def binned_average_precision(pos_hist, neg_hist) -> float:
    """Average precision from score histograms: AP = Σ_n (R_n − R_{n−1}) P_n (the step-wise sum of
    sklearn's ``average_precision_score``), thresholds at the bin edges from the top bin down, scores
    inside one bin tied. Equals sklearn's AP on scores quantised to bin centres; nan without positives."""
    pos, neg = np.asarray(pos_hist), np.asarray(neg_hist)
    if pos.shape != neg.shape or pos.ndim != 1:
        raise ValueError(f"binned_average_precision: histograms must be 1-D of equal length: {pos.shape}, {neg.shape}")
    return float(_binned_ap(pos, neg))


def threshold_at_false_alarm(good_scores, rate: float = FALSE_ALARM_RATE) -> float:
    """Image threshold t for a false-alarm rate on defect-free images: an image alarms when its score > t;
    t = the (k+1)-th largest good score, k = floor(rate · n_good), so at most k good images alarm (ties at
    t do not). nan without good scores; −inf when k ≥ n_good (every image alarms)."""
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if s.size == 0:
        return float("nan")
    k = math.floor(rate * s.size + 1e-9)
    return float(s[k]) if k < s.size else float("-inf")


def recall_above(scores, threshold: float) -> float:
    """Fraction of ``scores`` strictly above ``threshold``; nan when empty or the threshold is nan."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0 or math.isnan(threshold):
        return float("nan")
    return float(np.mean(s > threshold))


def source_metrics(records) -> dict:
    """Metrics over a list of source records: ``pixel_ap`` (binned AP of the summed histograms),
    ``image_recall@fa5`` / ``region_recall@fa5`` (defect images' ``image_score`` / all defect regions'
    ``region_scores`` above the threshold at 5 % false alarms on the good images) and that
    ``false_alarm_threshold``."""
    records = list(records)
    if not records:
        nan = float("nan")
        return {"pixel_ap": nan, "image_recall@fa5": nan, "region_recall@fa5": nan, "false_alarm_threshold": nan}
    pos = np.sum([r["pos_hist"] for r in records], axis=0)
    neg = np.sum([r["neg_hist"] for r in records], axis=0)
    good = [r["image_score"] for r in records if r["type"] == "good"]
    defect = [r for r in records if r["type"] != "good"]
    t = threshold_at_false_alarm(good)
    return {"pixel_ap": binned_average_precision(pos, neg),
            "image_recall@fa5": recall_above([r["image_score"] for r in defect], t),
            "region_recall@fa5": recall_above([s for r in defect for s in r["region_scores"]], t),
            "false_alarm_threshold": t}


# ----------------------------------------------------------------------------- bootstrap


def _draw_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) multiplicities of n items drawn n times with replacement: ``rng.integers(0, n, (n_boot, n))``."""
    idx = rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), dtype=np.int64)
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def _metric_draws(records: list[dict], c_def: np.ndarray, c_good: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` per draw for ``records`` = [defect sources..., good sources...] with multiplicities c_def, c_good."""
    n_def = c_def.shape[1]
    defect, good = records[:n_def], records[n_def:]
    if metric == "pixel_ap":
        counts = np.concatenate([c_def, c_good], axis=1)
        pos = counts @ np.asarray([r["pos_hist"] for r in records], dtype=np.float64)
        neg = counts @ np.asarray([r["neg_hist"] for r in records], dtype=np.float64)
        return _binned_ap(pos, neg)
    n_boot = c_def.shape[0]
    if not good or not defect:
        return np.full(n_boot, np.nan)
    # threshold: (k+1)-th largest good score of the resampled multiset
    g = np.asarray([r["image_score"] for r in good], dtype=np.float64)
    order = np.argsort(-g, kind="stable")
    k = math.floor(FALSE_ALARM_RATE * len(good) + 1e-9)
    cum = np.cumsum(c_good[:, order], axis=1)
    t = g[order][np.argmax(cum > k, axis=1)] if k < len(good) else np.full(n_boot, -np.inf)
    if metric == "image_recall@fa5":
        s = np.asarray([r["image_score"] for r in defect], dtype=np.float64)
        return (c_def * (s[None, :] > t[:, None])).sum(axis=1) / n_def
    sizes = np.asarray([len(r["region_scores"]) for r in defect], dtype=np.float64)
    regions = np.asarray([s for r in defect for s in r["region_scores"]], dtype=np.float64)
    owner = np.repeat(np.arange(n_def), sizes.astype(np.int64))
    hits = (regions[None, :] > t[:, None]).astype(np.float64)
    above = hits @ (owner[:, None] == np.arange(n_def)).astype(np.float64)  # per source: regions above t
    total = c_def @ sizes
    return np.divide((c_def * above).sum(axis=1), total, out=np.full(n_boot, np.nan), where=total > 0)


def paired_bootstrap(replicates, metric: str, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                     resample_replicates: bool = True) -> dict:
    """Paired cluster bootstrap of Δ = metric(b) − metric(a), averaged over replicates.

    ``replicates``: ``[{"cluster", "a": {id: record}, "b": {id: record}}]`` (a = baseline arm, both arms on
    the same sources; every replicate of a cluster on the same sources). Point estimate: mean over
    replicates of Δ from :func:`source_metrics` on all sources (nan replicates ignored). Each draw
    resamples each cluster's sources with replacement, defect and good sources separately (stratified),
    the SAME draw for both arms and for every replicate of the cluster; the draw's statistic is the mean
    Δ over replicates (nan ignored); CI = (alpha/2, 1 − alpha/2) percentiles of the draws (Efron &
    Tibshirani 1993, percentile interval). With ``resample_replicates`` (two-stage cluster bootstrap,
    Davison & Hinkley 1997 §3.8) each draw also resamples the cluster's replicates (its training seeds)
    with replacement, so the CI covers training variance as well as the choice of evaluation sources;
    the draw's statistic is then the multiplicity-weighted mean Δ. RNG: ``numpy.random.default_rng(seed)``;
    clusters in order of first appearance, ids sorted within a stratum, defect indices
    ``rng.integers(0, n_def, (n_boot, n_def))``, then good ones likewise, then (``resample_replicates``)
    replicate indices ``rng.integers(0, n_members, (n_boot, n_members))`` in order of appearance.
    ``n_replicates`` counts replicates with a finite Δ."""
    if metric not in METRICS:
        raise ValueError(f"paired_bootstrap: unknown metric {metric!r}, expected one of {METRICS}")
    replicates = list(replicates)
    deltas = []
    for r in replicates:
        if set(r["a"]) != set(r["b"]):
            raise ValueError(f"paired_bootstrap: arms of cluster {r['cluster']!r} are evaluated on different sources")
        deltas.append(source_metrics(r["b"].values())[metric] - source_metrics(r["a"].values())[metric])
    finite = [d for d in deltas if math.isfinite(d)]
    mean = float(np.mean(finite)) if finite else float("nan")

    rng = np.random.default_rng(seed)
    total, n_ok = np.zeros(n_boot), np.zeros(n_boot)
    for cl in dict.fromkeys(r["cluster"] for r in replicates):
        members = [r for r in replicates if r["cluster"] == cl]
        ids = set(members[0]["a"])
        if any(set(r["a"]) != ids for r in members):
            raise ValueError(f"paired_bootstrap: replicates of cluster {cl!r} are evaluated on different sources")
        defect = sorted(i for i in ids if members[0]["a"][i]["type"] != "good")
        good = sorted(i for i in ids if members[0]["a"][i]["type"] == "good")
        c_def, c_good = _draw_counts(rng, len(defect), n_boot), _draw_counts(rng, len(good), n_boot)
        weight = _draw_counts(rng, len(members), n_boot) if resample_replicates \
            else np.ones((n_boot, len(members)))
        for j, r in enumerate(members):
            arms = [_metric_draws([r[arm][i] for i in defect + good], c_def, c_good, metric) for arm in ("a", "b")]
            d = arms[1] - arms[0]
            ok = np.isfinite(d)
            total += weight[:, j] * np.where(ok, d, 0.0)
            n_ok += weight[:, j] * ok
    draws = total[n_ok > 0] / n_ok[n_ok > 0]
    if draws.size:
        lo, hi = np.percentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    else:
        lo = hi = float("nan")
    return {"mean": mean, "ci_low": float(lo), "ci_high": float(hi), "n_replicates": len(finite),
            "deltas": [float(d) for d in deltas], "n_boot": int(n_boot)}


def pixel_ap_influence(a: dict, b: dict) -> dict[str, float]:
    """Leave-one-source-out influence on a replicate's Δ pixel AP (b − a; Cook-style deletion diagnostic,
    Cook 1977): for each evaluation source i, ``Δ(all) − Δ(all but i)``, where Δ(all but i) recomputes both
    arms' binned AP (:func:`binned_average_precision`) without source i's histograms. Positive: the source
    pushes the generator up; negative: it is where the generator loses. nan where removing i leaves no
    positive pixel. ``a``, ``b``: ``{id: record}`` on the same sources."""
    if set(a) != set(b):
        raise ValueError("pixel_ap_influence: the arms are evaluated on different sources")
    ids = sorted(a)
    full, loo = [], []
    for arm in (a, b):
        pos = np.asarray([arm[i]["pos_hist"] for i in ids], dtype=np.float64)
        neg = np.asarray([arm[i]["neg_hist"] for i in ids], dtype=np.float64)
        full.append(_binned_ap(pos.sum(0), neg.sum(0)))
        loo.append(_binned_ap(pos.sum(0)[None] - pos, neg.sum(0)[None] - neg))
    delta, without = full[1] - full[0], loo[1] - loo[0]
    return {i: float(delta - w) for i, w in zip(ids, without)}


def wilcoxon_p(deltas) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the per-replicate deltas (``scipy.stats.wilcoxon``, zero
    deltas dropped, exact distribution for small n without ties); 1.0 when every delta is 0, nan with
    fewer than 2 finite deltas."""
    d = np.asarray([x for x in deltas if x is not None and math.isfinite(x)], dtype=np.float64)
    if d.size < 2:
        return float("nan")
    if not d.any():
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(d, alternative="two-sided").pvalue)


def verdict(ci_low: float, ci_high: float) -> str:
    """"better" when the CI lies above 0, "worse" when below, else (also nan) "not distinguishable"."""
    if ci_low > 0:
        return "better"
    if ci_high < 0:
        return "worse"
    return "not distinguishable"


def compare(replicates, metric: str, **kw) -> dict:
    """One result row: :func:`paired_bootstrap` (``kw`` passed on) + ``wilcoxon_p`` + ``verdict``."""
    res = paired_bootstrap(replicates, metric, **kw)
    return {"metric": metric, **res, "wilcoxon_p": wilcoxon_p(res["deltas"]),
            "verdict": verdict(res["ci_low"], res["ci_high"])}


# ----------------------------------------------------------------------------- figure

VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "not distinguishable": "tab:grey"}


def forest_plot(rows, path, title: str = "") -> Path:
    """Forest plot PNG: one line per row (``label``, ``mean``, ``ci_low``, ``ci_high``, ``verdict``), a point
    at the mean with CI whiskers, coloured by verdict, and a vertical line at 0. Written atomically."""
    from matplotlib.figure import Figure

    rows, path = list(rows), Path(path)
    fig = Figure(figsize=(7, 1.2 + 0.4 * max(len(rows), 1)), layout="constrained")
    ax = fig.add_subplot()
    for y, r in enumerate(reversed(rows)):
        if math.isfinite(r["mean"]):
            lo, hi = r["ci_low"], r["ci_high"]
            err = [[r["mean"] - lo], [hi - r["mean"]]] if math.isfinite(lo) and math.isfinite(hi) else None
            ax.errorbar(r["mean"], y, xerr=err, fmt="o", capsize=3,
                        color=VERDICT_COLORS.get(r.get("verdict"), "tab:grey"))
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [str(r["label"]) for r in reversed(rows)])
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    ax.set_xlabel("paired Δ (compared − baseline)")
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
