"""Experiments and selections (learning curves, nested CV, probes): each commits its command and result under bench/results/ (run from the repository root: ``python -m bench.experiments.<name>``)."""
