"""Downstream benchmark: generators' synthetic data vs real-only on a segmenter and RT-DETR, equal budgets."""

from defectfill.benchmark.report import write_report
from defectfill.benchmark.runner import BenchmarkConfig, benchmark_main, run_benchmark

__all__ = ["BenchmarkConfig", "benchmark_main", "run_benchmark", "write_report"]
