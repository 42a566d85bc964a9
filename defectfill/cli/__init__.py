"""The ``defectfill`` command line: ``main`` (the console script) and ``build_parser``.

One module per verb (``train``, ``fit``, ``generate``, ``detect``, ``benchmark``, ``pretrain_base``,
``demo``, ``tools``), each with ``add_parser(subparsers)`` and the function it runs; the spellings
the verbs share are in :mod:`defectfill.cli.flags`.
"""

from defectfill.cli.main import benchmark_main, build_parser, detect_main, main

__all__ = ["benchmark_main", "build_parser", "detect_main", "main"]
