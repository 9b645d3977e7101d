"""Tests; a package so that tests.peers imports the same way under pytest, mypy and python -m."""
