"""Measuring what a rung does: fidelity, MACs, memory, the machine, robustness."""
