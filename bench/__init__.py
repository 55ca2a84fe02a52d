"""Benchmarks: ``python -m bench [NAME ...] [--quick]`` (see :mod:`bench.__main__`)."""
