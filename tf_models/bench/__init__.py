"""Benchmarks: what the ``scripts/bench_*.py`` measure, so the scripts only parse and call."""
