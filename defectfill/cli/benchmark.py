"""``defectfill benchmark``: compare generators by what their synthetic data adds to a downstream model.

Exit 0: every planned cell has its result; 1: some failed (listed) or were left to other processes;
2: bad input or an output folder that cannot be written (one ``error:`` line). The runner:
:mod:`defectfill.benchmark.runner`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from defectfill.cli import flags


def add_parser(sub) -> None:
    from defectfill.benchmark import executors

    p = sub.add_parser("benchmark", help="compare generators by what they add to a downstream model (segmenter for now)",
                       description="Benchmark runner: which generator's synthetic defects help a downstream model, "
                                   "and by how much.")
    p.add_argument("--config", required=True)
    p.add_argument("--eval-data-dir", "--eval_data_dir", dest="eval_data", default=None, metavar="DIR",
                   help="separate evaluation folder (final evaluation only)")
    flags.output_dir(p, default=None)
    flags.overrides(p)
    p.add_argument("--report-only", action="store_true", help="rebuild the report from the finished cells")
    p.add_argument("--executor", choices=executors.EXECUTORS, default=None,
                   help="where units run: local (this process; the default) or ray (one Ray task per unit)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to use with --executor ray (e.g. auto); default: start a local Ray")
    p.add_argument("--no-wait", action="store_true",
                   help="do not wait for the units other processes on this output folder are running")
    flags.renamed(p, "--eval-data", "--eval-data-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectfill.benchmark import executors
    from defectfill.benchmark.runner import BenchmarkConfig, run_benchmark
    from defectfill.config import load_config
    from defectfill.errors import ConfigError, DataError, output_errors

    cfg = load_config(BenchmarkConfig, args.config, args.overrides, eval_data=args.eval_data,
                      output_dir=args.output_dir)
    if args.executor or args.ray_address:
        if args.ray_address and (args.executor or cfg.executor.get("kind", "local")) != "ray":
            raise ConfigError("--ray-address needs --executor ray")
        cfg.executor = {**cfg.executor, **({"kind": args.executor} if args.executor else {}),
                        **({"address": args.ray_address} if args.ray_address else {})}
        executors.executor_config(cfg.executor)
    out = Path(cfg.output_dir)
    if args.report_only:
        from defectfill.benchmark.report import write_report

        if not (out / "cells").is_dir():
            raise DataError(f"{out}: no cells to report (run the benchmark into this output folder first)")
        with output_errors(out, "rerun with --report-only"):
            report = {**write_report(out, cfg.stats), "run": {"cells_run": 0}}
        print(json.dumps({"output_dir": cfg.output_dir, **report["run"], "rows": len(report["rows"]),
                          "report": str(out / "results.md")}))
        return 0
    report = run_benchmark(cfg, wait=not args.no_wait)
    run = report["run"]
    for f in run["failed_cells"]:
        print(f"failed: {f['cell']}: {f['error']}", file=sys.stderr)
    parts = [f"{run['cells_done']} of {run['cells_planned']} cells done", f"{run['cells_failed']} failed"]
    if run["cells_not_run"]:
        parts.append(f"{len(run['cells_not_run'])} not run (held by other processes: "
                     f"{', '.join(run['units_busy_elsewhere']) or 'none'})")
    hint = "" if run["complete"] else "; rerun the same command to " + (
        "retry the failed cells" if run["cells_failed"] else "finish the grid")
    print(f"benchmark: {', '.join(parts)}; report {out / 'results.md'}{hint}", file=sys.stderr)
    print(json.dumps({"output_dir": cfg.output_dir, "complete": run["complete"], "cells_run": run["cells_run"],
                      "cells_skipped": run["cells_skipped"], "cells_failed": run["cells_failed"],
                      "cells_not_run": len(run["cells_not_run"]), "units_busy_elsewhere": run["units_busy_elsewhere"],
                      "rows": len(report["rows"]), "report": str(out / "results.md")}))
    return 0 if run["complete"] else 1
