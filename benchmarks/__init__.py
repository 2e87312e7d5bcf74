"""Benchmark scripts: each measures one thing and writes a section of BENCHMARKS.md."""
