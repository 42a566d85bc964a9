"""Downstream benchmark: generators' synthetic data vs real-only on a segmenter and RT-DETR, equal budgets.
Command line: ``defectfill benchmark`` (:mod:`defectfill.cli.benchmark`).

Names load lazily: the worker child (``python -m defectfill.benchmark.worker``) imports this package
and must start without torch (its peak memory is a reported number).
"""

__all__ = ["BenchmarkConfig", "run_benchmark", "write_report"]


def __getattr__(name):
    if name == "write_report":
        from defectfill.benchmark.report import write_report  # lazy: see the module docstring

        return write_report
    if name in ("BenchmarkConfig", "run_benchmark"):
        from defectfill.benchmark import runner  # lazy: see the module docstring

        return getattr(runner, name)
    raise AttributeError(name)
