"""Benchmarks: Linear, Conv2d and MiniLM suites, peers, isolated timing, machine limits."""
