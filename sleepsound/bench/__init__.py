"""Benchmarks: throughput and peak memory of a pipeline stage beside a simple baseline measured in the same run.

A benchmark is not a timed test: it prints figures, it does not pass or fail on them.
"""
