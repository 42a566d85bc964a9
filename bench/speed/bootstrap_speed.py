"""Time the paired cluster bootstrap at a CV grid's scale (15 replicates x 25 sources x 1024 bins x 2000
draws), with and without resampling the seed replicates; writes bench/results/bootstrap_speed.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def replicates(seed: int = 8, bins: int = 1024) -> list[dict]:
    rng = np.random.default_rng(seed)

    def source(sid, kind):
        pos = np.bincount(rng.integers(bins // 4, bins, 40), minlength=bins) if kind != "good" else np.zeros(bins)
        return {"id": sid, "type": kind, "fabric": "f", "pos_hist": pos.tolist(),
                "neg_hist": np.bincount(rng.integers(0, bins, 200), minlength=bins).tolist(),
                "image_score": float(rng.random()), "region_scores": [float(rng.random())] if kind != "good" else []}

    reps = []
    for fold in range(5):
        ids = [(f"f{fold}-d{i}", "knot") for i in range(15)] + [(f"f{fold}-g{i}", "good") for i in range(10)]
        for _ in range(3):
            reps.append({"cluster": fold, "a": {i: source(i, k) for i, k in ids},
                         "b": {i: source(i, k) for i, k in ids}})
    return reps


def main() -> int:
    from defectfill.benchmark import stats

    reps, out = replicates(), {}
    for resample in (False, True):
        t0 = time.perf_counter()
        stats.paired_bootstrap(reps, "pixel_ap", n_boot=2000, resample_replicates=resample)
        out[f"resample_replicates={resample}"] = round(time.perf_counter() - t0, 3)
    path = REPO / "bench" / "results" / "bootstrap_speed.json"
    path.write_text(json.dumps({"seconds": out, "command": "OMP_NUM_THREADS=1 python -m bench.speed.bootstrap_speed",
                                "note": "one process; the machine was shared with a running benchmark grid"},
                               indent=2) + "\n")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
