"""Benchmarks (``bench.speed``) and experiments (``bench.experiments``); results in ``bench/results/``."""
