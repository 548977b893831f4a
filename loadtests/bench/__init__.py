"""Benchmarks: batching against the old single-process design, serving overhead, GPU figures."""
