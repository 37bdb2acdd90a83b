"""Benchmark scripts (run as ``python bench/X.py`` from the repository root) and their shared ``bench.common``."""
