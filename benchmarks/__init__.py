"""Benchmarks: one harness, the reference-pattern baseline, one script per question."""
