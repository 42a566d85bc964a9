"""Speed and memory benchmarks: each writes JSON/Markdown under bench/results/ (run from the repository root: ``python -m bench.speed.<name>``)."""
