"""Choose DFC's open-set settings on the TRAINING part of the AITEX dev split only.

The benchmark's open-set task leaves `nep` out and scores it against held-out known-type defects.
Here neither `nep` nor the benchmark's held-out images (eval_fraction 0.3, split seed 1234) are
read: each defect type with at least `--min-images` training images is in turn the "novel" type;
the other types' images are split by source (70 / 30, per seed) into DFC training crops and
known-type validation crops; DFC is trained on the first and scored on known-validation vs novel
(open-set AUROC of the unknown score, unknown flagged / false-unknown at the training threshold).

    python -m bench.experiments.select_openset --data ../shared/data/aitex --out bench/results/openset_selection
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/aitex")
    p.add_argument("--out", default="bench/results/openset_selection")
    p.add_argument("--exclude", default="nep", help="the benchmark's unknown type: never read here")
    p.add_argument("--min-images", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--steps", type=int, default=200)
    return p.parse_args(argv)


VARIANTS = {  # name -> DFCConfig overrides
    "embedding_a2": {"openmax_space": "embedding", "alpha": 2},
    "embedding_a1": {"openmax_space": "embedding", "alpha": 1},
    "encoder_a2": {"openmax_space": "encoder", "alpha": 2},
    "encoder_a1": {"openmax_space": "encoder", "alpha": 1},
    "logits_a2": {"openmax_space": "logits", "alpha": 2},
    "embedding_wd_a2": {"openmax_space": "embedding", "alpha": 2, "weight_decay": 1e-2, "steps": 100},
}


def main(args) -> dict:
    from defectfill.benchmark.runner import held_out_split, split_ids
    from defectfill.data.datasets import load_reference_dataset
    from defectfill.downstream.openset import DFCConfig, train_dfc
    from defectfill.metrics.distribution import crop_around_masks

    root = Path(args.data)
    held = held_out_split(root, 0.3, 1234)
    ds = load_reference_dataset(root)
    samples = [s for s in ds.samples if s.id not in held and s.defect_type != args.exclude]
    crops = {s.id: crop_around_masks(s.image, s.mask, args.crop)[0] for s in samples}
    types = {s.id: s.defect_type for s in samples}
    counts = Counter(types.values())
    novels = sorted(t for t, n in counts.items() if n >= args.min_images and t != counts.most_common(1)[0][0])
    runs = []
    for novel, seed in itertools.product(novels, args.seeds):
        known_ids = [i for i in crops if types[i] != novel]
        val = split_ids(known_ids, [], {i: types[i] for i in known_ids}, 0.3, seed)
        fit = [i for i in known_ids if i not in val]
        nov = [i for i in crops if types[i] == novel]
        val = [i for i in known_ids if i in val and types[i] in {types[j] for j in fit}]
        for name, over in VARIANTS.items():
            cfg = DFCConfig(**{"crop": args.crop, "size": args.crop, "steps": args.steps, "seed": seed, **over})
            t0 = time.perf_counter()
            dfc = train_dfc(np.stack([crops[i] for i in fit]), [types[i] for i in fit], cfg)
            r = dfc.evaluate(np.stack([crops[i] for i in val]), [types[i] for i in val],
                             np.stack([crops[i] for i in nov]))
            runs.append({"variant": name, "novel": novel, "seed": seed, "fit": len(fit), "val": len(val),
                         "novel_n": len(nov), "seconds": time.perf_counter() - t0,
                         **{k: r[k] for k in ("auroc", "novel_flagged_fraction", "known_false_unknown_rate",
                                              "known_accuracy")}})
            print(json.dumps(runs[-1]), flush=True)
    summary = {}
    for name in VARIANTS:
        rs = [r for r in runs if r["variant"] == name]
        summary[name] = {k: float(np.mean([r[k] for r in rs])) for k in
                         ("auroc", "novel_flagged_fraction", "known_false_unknown_rate", "known_accuracy")}
        summary[name]["auroc_per_novel"] = {n: float(np.mean([r["auroc"] for r in rs if r["novel"] == n]))
                                            for n in novels}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"data": str(root), "excluded": args.exclude, "held_out": "eval_fraction 0.3, split seed 1234",
              "novel_types": novels, "seeds": args.seeds, "variants": VARIANTS, "summary": summary, "runs": runs,
              "command": "python -m bench.experiments.select_openset --data ../shared/data/aitex --out " + str(args.out)}
    (out / "results.json").write_text(json.dumps(record, indent=2))
    lines = ["# DFC open-set settings, chosen on the AITEX dev TRAINING part", "",
             f"Novel types in turn: {', '.join(novels)} (each >= {args.min_images} training images); "
             f"`{args.exclude}` and the benchmark's held-out images are never read; seeds {args.seeds}.", "",
             "| variant | AUROC | unknown flagged | false unknown | known accuracy | AUROC per novel type |",
             "|---|---|---|---|---|---|"]
    for name, v in summary.items():
        per = ", ".join(f"{n} {a:.2f}" for n, a in v["auroc_per_novel"].items())
        lines.append(f"| {name} | {v['auroc']:.3f} | {v['novel_flagged_fraction']:.3f} | "
                     f"{v['known_false_unknown_rate']:.3f} | {v['known_accuracy']:.3f} | {per} |")
    lines += ["", f"Command: `{record['command']}`"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return record


if __name__ == "__main__":
    main(parse_args())
