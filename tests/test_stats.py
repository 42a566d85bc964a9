"""defectfill.benchmark.stats: binned AP, false-alarm threshold, recall, paired cluster bootstrap,
Wilcoxon, verdicts, forest plot. Expectations are hand-computed or from independent loop references."""

import math

import numpy as np
import pytest

from defectfill.benchmark import stats


def rec(id_, type_, pos, neg, image_score, regions=()):
    return {"id": id_, "type": type_, "fabric": "f0", "pos_hist": list(pos), "neg_hist": list(neg),
            "image_score": float(image_score), "region_scores": [float(s) for s in regions]}


def reference_ap(labels, scores):
    """sklearn's average_precision_score written out: distinct thresholds from the top, predicted
    positive = score >= threshold, AP = Σ (R_n − R_{n−1}) P_n."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores.tolist()), reverse=True):
        called = scores >= thr
        tp = float((called & (labels == 1)).sum())
        recall, precision = tp / labels.sum(), tp / called.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


# ----------------------------------------------------------------------------- histogram, AP


def test_score_histogram_bins_clip_and_top_edge():
    # B = 4: [0, .25), [.25, .5), [.5, .75), [.75, 1]; -0.2 clipped to 0, 1.5 clipped to 1 -> last bin
    h = stats.score_histogram([0.0, 0.1, 0.5, 0.999, 1.0, -0.2, 1.5, 0.25], bins=4)
    assert h.dtype == np.int64
    assert h.tolist() == [3, 1, 1, 3]
    with pytest.raises(ValueError):
        stats.score_histogram([0.5, float("nan")])


def test_binned_ap_hand_cases():
    # pos=[0,1,1], neg=[1,1,0]. From the top bin down:
    #   bin 2: TP=1, FP=0 -> P=1,   R=1/2
    #   bin 1: TP=2, FP=1 -> P=2/3, R=1
    #   bin 0: TP=2, FP=2 -> R unchanged, no contribution
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert stats.binned_average_precision([0, 1, 1], [1, 1, 0]) == pytest.approx(5 / 6)
    # pos=[1,0,1,0], neg=[0,2,0,1]:
    #   bin 3: TP=0, FP=1 (R=0); bin 2: TP=1, FP=1 -> P=1/2, R=1/2; bin 1: TP=1, FP=3 (R same)
    #   bin 0: TP=2, FP=3 -> P=2/5, R=1.   AP = 1/2 * 1/2 + 1/2 * 2/5 = 0.45
    assert stats.binned_average_precision([1, 0, 1, 0], [0, 2, 0, 1]) == pytest.approx(0.45)
    # perfect separation -> 1; everything tied in one bin -> AP = prevalence
    assert stats.binned_average_precision([0, 0, 2], [3, 0, 0]) == pytest.approx(1.0)
    assert stats.binned_average_precision([0, 2, 0], [0, 6, 0]) == pytest.approx(0.25)
    assert math.isnan(stats.binned_average_precision([0, 0, 0], [1, 2, 3]))
    with pytest.raises(ValueError):
        stats.binned_average_precision([1, 2], [1, 2, 3])


@pytest.mark.parametrize("seed", range(6))
def test_binned_ap_matches_sklearn_on_bin_centres(seed):
    rng = np.random.default_rng(seed)
    bins = 16
    pos = rng.integers(0, 4, bins) * (rng.random(bins) < 0.5)
    neg = rng.integers(0, 6, bins) * (rng.random(bins) < 0.6)
    pos[rng.integers(bins)] += 1
    centres = (np.arange(bins) + 0.5) / bins
    scores = np.concatenate([np.repeat(centres, pos), np.repeat(centres, neg)])
    labels = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())]).astype(int)
    try:
        from sklearn.metrics import average_precision_score

        expected = average_precision_score(labels, scores)
    except ImportError:
        expected = reference_ap(labels, scores)
    assert stats.binned_average_precision(pos, neg) == pytest.approx(expected, rel=1e-12)
    # the histograms of those centre scores are the same histograms
    assert stats.score_histogram(scores[labels == 1], bins).tolist() == pos.tolist()


# ----------------------------------------------------------------------------- threshold, recall


def test_threshold_at_false_alarm_hand_cases():
    s = np.arange(1, 21) / 20  # 20 good images: k = floor(0.05 * 20) = 1 -> t = 2nd largest = 0.95
    t = stats.threshold_at_false_alarm(s)
    assert t == pytest.approx(0.95)
    assert (s > t).sum() == 1
    # tie at the threshold: two images at 0.9, k = 1 -> t = 0.9 and neither alarms (ties do not alarm)
    tied = [0.9, 0.9] + [0.1] * 18
    assert stats.threshold_at_false_alarm(tied) == 0.9
    assert stats.recall_above(tied, 0.9) == 0.0
    # 10 good images: k = 0 -> t = max, no good image alarms
    assert stats.threshold_at_false_alarm([0.3, 0.7, 0.2, 0.1, 0.5, 0.4, 0.6, 0.0, 0.8, 0.05]) == 0.8
    assert stats.threshold_at_false_alarm([0.3, 0.7, 0.2, 0.1], rate=0.5) == 0.2  # k = 2 -> 3rd largest
    assert stats.threshold_at_false_alarm([0.3, 0.7], rate=1.0) == -math.inf
    assert math.isnan(stats.threshold_at_false_alarm([]))


def test_threshold_never_exceeds_allowed_false_alarms():
    rng = np.random.default_rng(0)
    for n in (1, 7, 20, 39, 40, 41, 100):
        for rate in (0.0, 0.05, 0.1, 0.3):
            s = np.round(rng.random(n), 1)  # many ties
            t = stats.threshold_at_false_alarm(s, rate)
            assert (s > t).sum() <= math.floor(rate * n + 1e-9)


def test_recall_above():
    assert stats.recall_above([0.2, 0.5, 0.5, 0.9], 0.5) == 0.25
    assert stats.recall_above([0.2, 0.5], -math.inf) == 1.0
    assert math.isnan(stats.recall_above([], 0.5))
    assert math.isnan(stats.recall_above([0.7], float("nan")))


def test_source_metrics_hand_case():
    records = [
        rec("d1", "hole", [0, 1, 1], [2, 0, 0], 0.9, [0.9, 0.3]),
        rec("d2", "knot", [0, 0, 0], [1, 1, 0], 0.4, [0.4]),
        *[rec(f"g{i}", "good", [0, 0, 0], [1, 0, 0], 0.05 * i) for i in range(20)],
    ]
    m = stats.source_metrics(records)
    # summed: pos=[0,1,1], neg=[23,1,0] -> bin 2: P=1, R=1/2; bin 1: P=2/3, R=1 -> AP = 5/6
    assert m["pixel_ap"] == pytest.approx(5 / 6)
    # good scores 0, .05, ..., .95: k = 1 -> t = .90; image scores .9, .4 -> none above; regions .9,.3,.4 -> none
    assert m["false_alarm_threshold"] == pytest.approx(0.90)
    assert m["image_recall@fa5"] == 0.0 and m["region_recall@fa5"] == 0.0
    records[0]["image_score"], records[0]["region_scores"] = 0.95, [0.95, 0.3]
    m = stats.source_metrics(records)
    assert m["image_recall@fa5"] == 0.5 and m["region_recall@fa5"] == pytest.approx(1 / 3)
    # no good images -> no threshold -> nan recalls; AP unaffected
    m = stats.source_metrics(records[:2])
    assert math.isnan(m["image_recall@fa5"]) and math.isnan(m["region_recall@fa5"])
    assert m["pixel_ap"] == pytest.approx(5 / 6)
    assert set(stats.METRICS) <= set(m)


# ----------------------------------------------------------------------------- wilcoxon, verdict


def test_wilcoxon_p_hand_cases():
    # all 6 deltas positive: W- = 0, exact two-sided p = 2 * P(W- <= 0) = 2 / 2^6
    assert stats.wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 64)
    # ranks 1..6, only rank 2 negative: W- = 2; subsets of {1..6} with sum <= 2: {}, {1}, {2} -> p = 2*3/64
    assert stats.wilcoxon_p([1, -2, 3, 4, 5, 6]) == pytest.approx(6 / 64)
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(stats.wilcoxon_p([0.3]))
    assert math.isnan(stats.wilcoxon_p([0.3, float("nan")]))
    assert stats.wilcoxon_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, float("nan")]) == pytest.approx(2 / 64)


def test_verdict():
    assert stats.verdict(0.01, 0.2) == "better"
    assert stats.verdict(-0.2, -0.01) == "worse"
    assert stats.verdict(-0.1, 0.1) == "not distinguishable"
    assert stats.verdict(0.0, 0.0) == "not distinguishable"
    assert stats.verdict(float("nan"), float("nan")) == "not distinguishable"


# ----------------------------------------------------------------------------- bootstrap


def random_sources(rng, n_def=6, n_good=5, bins=32, prefix=""):
    out = {}
    for i in range(n_def):
        sid = f"{prefix}d{i}"
        pos = np.bincount(rng.integers(bins // 4, bins, 40), minlength=bins)
        neg = np.bincount(rng.integers(0, bins, 200), minlength=bins)
        out[sid] = rec(sid, "hole" if i % 2 else "knot", pos, neg, rng.random(),
                       rng.random(rng.integers(1, 4)))
    for i in range(n_good):
        sid = f"{prefix}g{i}"
        out[sid] = rec(sid, "good", np.zeros(bins, int), np.bincount(rng.integers(0, bins, 200), minlength=bins),
                       rng.random() * 0.8)
    return out


def perturbed(sources, rng, noise=0.15):
    """Another arm on the same sources: shuffled histograms mass / scores."""
    out = {}
    for sid, r in sources.items():
        pos, neg = np.asarray(r["pos_hist"]), np.asarray(r["neg_hist"])
        shift = int(rng.integers(-3, 4))
        out[sid] = {**r, "pos_hist": np.roll(pos, shift).tolist() if pos.any() else r["pos_hist"],
                    "neg_hist": (neg + rng.integers(0, 3, neg.size)).tolist(),
                    "image_score": float(np.clip(r["image_score"] + rng.normal(0, noise), 0, 1)),
                    "region_scores": [float(np.clip(s + rng.normal(0, noise), 0, 1)) for s in r["region_scores"]]}
    return out


def make_replicates(seed=0, clusters=("f0", "f1"), seeds=2):
    rng = np.random.default_rng(seed)
    reps = []
    for cl in clusters:
        sources = random_sources(rng, prefix=f"{cl}-")
        for _ in range(seeds):
            a = perturbed(sources, rng)
            reps.append({"cluster": cl, "a": a, "b": perturbed(a, rng)})
    return reps


def reference_bootstrap(replicates, metric, n_boot, seed, alpha=0.05, resample_replicates=False):
    """Straightforward loop: the documented RNG protocol, then source_metrics on the resampled record lists
    (and, with ``resample_replicates``, on the resampled list of each cluster's replicates)."""
    rng = np.random.default_rng(seed)
    draws, picks = {}, {}
    for cl in dict.fromkeys(r["cluster"] for r in replicates):
        members = [r for r in replicates if r["cluster"] == cl]
        a0 = members[0]["a"]
        defect = sorted(i for i, x in a0.items() if x["type"] != "good")
        good = sorted(i for i, x in a0.items() if x["type"] == "good")
        di = rng.integers(0, len(defect), size=(n_boot, len(defect)))
        gi = rng.integers(0, len(good), size=(n_boot, len(good)))
        draws[cl] = [[defect[j] for j in di[k]] + [good[j] for j in gi[k]] for k in range(n_boot)]
        if resample_replicates:
            ri = rng.integers(0, len(members), size=(n_boot, len(members)))
            picks[cl] = [[members[j] for j in ri[k]] for k in range(n_boot)]
        else:
            picks[cl] = [members] * n_boot
    values = []
    for k in range(n_boot):
        ds = []
        for cl in draws:
            ids = draws[cl][k]
            for r in picks[cl][k]:
                d = (stats.source_metrics([r["b"][i] for i in ids])[metric]
                     - stats.source_metrics([r["a"][i] for i in ids])[metric])
                if math.isfinite(d):
                    ds.append(d)
        if ds:
            values.append(np.mean(ds))
    return np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])


@pytest.mark.parametrize("resample_replicates", [False, True])
@pytest.mark.parametrize("metric", stats.METRICS)
def test_bootstrap_matches_loop_reference(metric, resample_replicates):
    reps = make_replicates(seed=1)
    res = stats.paired_bootstrap(reps, metric, n_boot=40, seed=3, resample_replicates=resample_replicates)
    lo, hi = reference_bootstrap(reps, metric, n_boot=40, seed=3, resample_replicates=resample_replicates)
    assert res["ci_low"] == pytest.approx(lo, abs=1e-12)
    assert res["ci_high"] == pytest.approx(hi, abs=1e-12)
    expected = [stats.source_metrics(r["b"].values())[metric] - stats.source_metrics(r["a"].values())[metric]
                for r in reps]
    assert res["deltas"] == pytest.approx(expected)
    assert res["mean"] == pytest.approx(np.mean(expected))
    assert res["n_replicates"] == 4 and res["n_boot"] == 40
    assert res["ci_low"] < res["ci_high"]


@pytest.mark.parametrize("metric", stats.METRICS)
def test_bootstrap_identical_arms_is_exactly_zero(metric):
    reps = [{**r, "b": r["a"]} for r in make_replicates(seed=2)]
    res = stats.paired_bootstrap(reps, metric, n_boot=200)
    assert res["mean"] == 0.0 and res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    assert res["deltas"] == [0.0] * len(reps)
    row = stats.compare(reps, metric, n_boot=200)
    assert row["verdict"] == "not distinguishable" and row["wilcoxon_p"] == 1.0


def test_bootstrap_clear_improvement_is_better():
    rng = np.random.default_rng(4)
    bins, reps = 32, []
    for cl in ("f0", "f1", "f2"):
        for _ in range(2):
            a = {}
            for i in range(5):  # defect pixels in the middle, defect scores below every good score
                pos = np.bincount(rng.integers(8, 24, 30), minlength=bins)
                neg = np.bincount(rng.integers(0, 16, 100), minlength=bins)
                a[f"{cl}d{i}"] = rec(f"{cl}d{i}", "hole", pos, neg, 0.1 * rng.random(), [0.1 * rng.random()])
            for i in range(6):  # fabric pixels up to bin 30 (never the top bin)
                neg = np.bincount(rng.integers(20, 31, 100), minlength=bins)
                a[f"{cl}g{i}"] = rec(f"{cl}g{i}", "good", np.zeros(bins, int), neg, 0.5 + 0.4 * rng.random())
            b = {k: {**r, "pos_hist": (np.eye(bins, dtype=int)[-1] * sum(r["pos_hist"])).tolist(),  # all in top bin
                     "image_score": 1.0 if r["type"] != "good" else r["image_score"],
                     "region_scores": [1.0] * len(r["region_scores"])} for k, r in a.items()}
            reps.append({"cluster": cl, "a": a, "b": b})
    for metric in stats.METRICS:
        row = stats.compare(reps, metric, n_boot=300)
        assert all(d > 0 for d in row["deltas"])
        assert row["ci_low"] > 0 and row["verdict"] == "better"
        if metric == "pixel_ap":  # 6 distinct positive deltas: exact test (recall deltas are all tied at 1)
            assert row["wilcoxon_p"] == pytest.approx(2 / 64)
        # swapped arms: worse
        worse = stats.compare([{**r, "a": r["b"], "b": r["a"]} for r in reps], metric, n_boot=300)
        assert worse["ci_high"] < 0 and worse["verdict"] == "worse"
    # recall deltas are exactly 1 in every draw (0 -> 1)
    row = stats.compare(reps, "image_recall@fa5", n_boot=50)
    assert row["mean"] == row["ci_low"] == row["ci_high"] == 1.0


def test_bootstrap_reproducible_with_seed():
    reps = make_replicates(seed=5)
    r1 = stats.paired_bootstrap(reps, "pixel_ap", n_boot=300, seed=7)
    r2 = stats.paired_bootstrap(reps, "pixel_ap", n_boot=300, seed=7)
    r3 = stats.paired_bootstrap(reps, "pixel_ap", n_boot=300, seed=8)
    assert r1 == r2
    assert (r1["ci_low"], r1["ci_high"]) != (r3["ci_low"], r3["ci_high"])
    assert r1["mean"] == r3["mean"]


def test_bootstrap_shares_resample_within_cluster():
    # Two replicates with swapped arms: Δ2 = −Δ1 under the SAME resample, so the mean over replicates is 0
    # in every draw (CI exactly [0, 0]). In different clusters (independent resamples) it is not.
    rng = np.random.default_rng(6)
    sources = random_sources(rng, prefix="x")
    a, b = perturbed(sources, rng), perturbed(sources, rng)
    swapped = [{"cluster": "f0", "a": a, "b": b}, {"cluster": "f0", "a": b, "b": a}]
    shared = stats.paired_bootstrap(swapped, "pixel_ap", n_boot=200, resample_replicates=False)
    assert shared["ci_low"] == pytest.approx(0.0, abs=1e-15) and shared["ci_high"] == pytest.approx(0.0, abs=1e-15)
    assert shared["deltas"][0] == pytest.approx(-shared["deltas"][1]) and shared["deltas"][0] != 0
    apart = stats.paired_bootstrap([{"cluster": "f0", "a": a, "b": b}, {"cluster": "f1", "a": b, "b": a}],
                                   "pixel_ap", n_boot=200, resample_replicates=False)
    assert apart["ci_high"] - apart["ci_low"] > 1e-3
    # resampling the replicates (training seeds) too: the seed-to-seed spread ±Δ widens the CI to cover
    # draws where only one of the two replicates was picked, i.e. up to |Δ| on both sides
    seeds = stats.paired_bootstrap(swapped, "pixel_ap", n_boot=400, resample_replicates=True)
    d = abs(shared["deltas"][0])
    assert seeds["ci_low"] < -0.3 * d and seeds["ci_high"] > 0.3 * d


def test_bootstrap_nan_replicates_and_errors():
    reps = make_replicates(seed=7, clusters=("f0",), seeds=2)
    # a replicate without good sources has nan recall: ignored in the mean and in the draws
    no_good = {k: v for k, v in reps[0]["a"].items() if v["type"] != "good"}
    nan_rep = {"cluster": "f9", "a": no_good, "b": {k: reps[0]["b"][k] for k in no_good}}
    res = stats.paired_bootstrap([*reps, nan_rep], "image_recall@fa5", n_boot=50)
    alone = stats.paired_bootstrap(reps, "image_recall@fa5", n_boot=50)
    assert math.isnan(res["deltas"][-1]) and res["n_replicates"] == 2
    assert res["mean"] == pytest.approx(alone["mean"])
    with pytest.raises(ValueError):
        stats.paired_bootstrap(reps, "f1_score")
    broken = {"cluster": "f0", "a": reps[0]["a"], "b": dict(list(reps[0]["b"].items())[1:])}
    with pytest.raises(ValueError):
        stats.paired_bootstrap([broken], "pixel_ap")


def test_bootstrap_at_grid_scale():
    # 15 replicates (5 folds x 3 seeds) x ~25 sources x 1024 bins x 2000 draws (its time: bench/speed/bootstrap_speed.py)
    rng = np.random.default_rng(8)
    bins, reps = 1024, []
    for fold in range(5):
        sources = random_sources(rng, n_def=15, n_good=10, bins=bins, prefix=f"f{fold}-")
        for _ in range(3):
            reps.append({"cluster": fold, "a": perturbed(sources, rng), "b": perturbed(sources, rng)})
    res = stats.paired_bootstrap(reps, "pixel_ap", n_boot=2000)
    assert res["n_replicates"] == 15 and math.isfinite(res["ci_low"]) and res["ci_low"] < res["ci_high"]


# ----------------------------------------------------------------------------- forest plot


def test_forest_plot_png(tmp_path):
    from PIL import Image

    rows = [{"label": "defectfill − real_only", "mean": 0.05, "ci_low": 0.01, "ci_high": 0.09, "verdict": "better"},
            {"label": "copy_paste − real_only", "mean": -0.02, "ci_low": -0.06, "ci_high": 0.01,
             "verdict": "not distinguishable"},
            {"label": "dfmgan − real_only", "mean": -0.1, "ci_low": -0.2, "ci_high": -0.05, "verdict": "worse"},
            {"label": "empty", "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"),
             "verdict": "not distinguishable"}]
    path = stats.forest_plot(rows, tmp_path / "sub" / "forest.png", title="pixel AP")
    assert path == tmp_path / "sub" / "forest.png" and path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 100
    assert [p.name for p in path.parent.iterdir()] == ["forest.png"]  # no temp file left behind


def test_subgroup_rows_split_the_delta_by_defect_type_and_fabric():
    from defectfill.benchmark.report import subgroup_rows

    rng = np.random.default_rng(9)
    cells = []
    for fold in (0, 1):
        sources = random_sources(rng, prefix=f"f{fold}-")
        for sd in (0, 1):
            a = perturbed(sources, rng)
            # the generator changes only the "hole" images: their positives move to the top bins
            b = {i: ({**r, "pos_hist": [0] * 28 + [sum(r["pos_hist"])] + [0] * 3} if r["type"] == "hole" else r)
                 for i, r in a.items()}
            for gen, recs in (("real_only", a), ("gen", b)):
                cells.append({"task": "segmenter", "setting": "main", "generator": gen,
                              "count": 0 if gen == "real_only" else 40, "fold": fold, "seed": sd,
                              "evaluations": {"all": {"per_source": list(recs.values())}}})
    rows = subgroup_rows(cells, "type", n_boot=200)
    by = {r["group"]: r for r in rows}
    assert set(by) == {"hole", "knot"} and all(r["generator"] == "gen" for r in rows)
    assert by["knot"]["mean"] == 0.0 and by["knot"]["ci_low"] == by["knot"]["ci_high"] == 0.0
    assert by["knot"]["defect_sources"] == 6  # 3 knots per fold
    # hand: per replicate, pixel AP of the hole + good records, generator minus real-only
    expected = []
    for c_a, c_b in zip(cells[0::2], cells[1::2]):
        keep = [r for r in c_a["evaluations"]["all"]["per_source"] if r["type"] in ("hole", "good")]
        keep_b = [r for r in c_b["evaluations"]["all"]["per_source"] if r["type"] in ("hole", "good")]
        expected.append(stats.source_metrics(keep_b)["pixel_ap"] - stats.source_metrics(keep)["pixel_ap"])
    assert by["hole"]["mean"] == pytest.approx(np.mean(expected)) and by["hole"]["mean"] > 0.05
    assert by["hole"]["verdict"] == "better"
    fabric = subgroup_rows(cells, "fabric", n_boot=200)
    assert [r["group"] for r in fabric] == ["f0"] and fabric[0]["defect_sources"] == 12


def test_pixel_ap_influence_matches_deleting_each_source():
    reps = make_replicates(seed=11, clusters=("f0",), seeds=1)
    a, b = reps[0]["a"], reps[0]["b"]
    got = stats.pixel_ap_influence(a, b)

    def delta(ids):
        return (stats.source_metrics([b[i] for i in ids])["pixel_ap"]
                - stats.source_metrics([a[i] for i in ids])["pixel_ap"])

    full = delta(sorted(a))
    for i in a:
        assert got[i] == pytest.approx(full - delta([j for j in sorted(a) if j != i]), abs=1e-12)
    with pytest.raises(ValueError):
        stats.pixel_ap_influence(a, {k: v for k, v in list(b.items())[1:]})


def test_verdict_summary_lines():
    from defectfill.benchmark.report import verdict_summary

    def row(g, base, mean, lo, hi, n=15):
        return {"setting": "main", "generator": g, "baseline": base, "metric": "pixel_ap", "mean": mean,
                "ci_low": lo, "ci_high": hi, "verdict": stats.verdict(lo, hi), "n_replicates": n}

    lines = verdict_summary([row("gen", "real_only", 0.02, 0.01, 0.03), row("gen", "shade", -0.01, -0.05, 0.02),
                             row("shade", "real_only", -0.04, -0.06, -0.02),
                             {**row("gen", "real_only", 9, 9, 9), "metric": "image_recall@fa5"}])
    assert lines[0] == "| setting | generator | n | Δ vs real_only | Δ vs shade |"
    assert lines[2] == "| main | gen | 15 | +0.020 [+0.010, +0.030] **better** | -0.010 [-0.050, +0.020] n.d. |"
    assert lines[3] == "| main | shade | 15 | -0.040 [-0.060, -0.020] **worse** | – |"
    assert verdict_summary([]) == []


def test_comparison_pairs_add_stats_compare_to_the_default_rows():
    from defectfill.benchmark.report import comparison_pairs

    names = ["copy_paste", "defectfill", "defectfill_native", "noise_blob", "real_only", "shade"]
    pairs = comparison_pairs(names, {"defectfill_native": ["defectfill", "copy_paste"], "ghost": ["shade"]})
    expected_real = [(g, "real_only") for g in names if g != "real_only"]
    assert pairs[:5] == expected_real
    assert set(pairs[5:]) == {("copy_paste", "shade"), ("copy_paste", "noise_blob"),
                              ("defectfill", "copy_paste"), ("defectfill", "shade"), ("defectfill", "noise_blob"),
                              ("defectfill_native", "copy_paste"), ("defectfill_native", "shade"),
                              ("defectfill_native", "noise_blob"), ("defectfill_native", "defectfill")}
    assert len(pairs) == len(set(pairs))
    assert comparison_pairs(["real_only", "shade"]) == [("shade", "real_only")]
