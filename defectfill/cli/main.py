"""The `defectfill` command line: the top parser and the dispatch; each verb lives in its own module.

The verb modules import the library inside the function they run (lazy: `defectfill --help` and
every verb start without loading torch, diffusers or ultralytics for the verbs that do not run)."""

from __future__ import annotations

import argparse
import sys

from defectfill.cli import benchmark, demo, detect, fit, generate, pretrain_base, tools, train
from defectfill.errors import one_line_errors

VERB_MODULES = (tools, train, fit, generate, detect, benchmark, pretrain_base, demo)  # the order of --help


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="defectfill", description="Realistic defect images for visual inspection.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in VERB_MODULES:
        module.add_parser(sub)
    return parser


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    return args.func(args) or 0


def detect_main(argv: list[str] | None = None) -> int:
    """``defectfill detect ARGV``; returns the exit code (2 with a one-line error on bad input)."""
    return main(["detect", *(sys.argv[1:] if argv is None else argv)])


def benchmark_main(argv: list[str] | None = None) -> int:
    """``defectfill benchmark ARGV``; returns the exit code."""
    return main(["benchmark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
