"""Benchmarks (run from the repository root, e.g. `python -m bench.e2e`); not installed with the service."""
