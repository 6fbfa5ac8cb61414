"""Benchmarks: ``python -m bench [name] [--quick]``; results go to ``bench/results/`` (ignored)."""
