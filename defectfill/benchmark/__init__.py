"""Downstream benchmark: every generator's synthetic data vs real-only on a segmenter and RT-DETR, equal budgets, several seeds."""

from defectfill.benchmark.report import write_report
from defectfill.benchmark.runner import BenchmarkConfig, benchmark_main, run_benchmark

__all__ = ["BenchmarkConfig", "run_benchmark", "benchmark_main", "write_report"]
