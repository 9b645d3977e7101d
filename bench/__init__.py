"""Benchmarks that print figures (never timed tests); run each as `python -m bench.NAME`."""
