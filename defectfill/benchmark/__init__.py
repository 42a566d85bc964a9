"""Downstream benchmark: every generator's synthetic data vs real-only, same segmenter budget, several seeds."""

from defectfill.benchmark.report import write_report
from defectfill.benchmark.runner import BenchmarkConfig, benchmark_main, run_benchmark

__all__ = ["BenchmarkConfig", "run_benchmark", "benchmark_main", "write_report"]
