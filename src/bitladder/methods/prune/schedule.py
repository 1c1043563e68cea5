"""Gradual pruning on the cubic schedule of Zhu & Gupta (2017), with fine-tuning between steps:
``s_t = s_f + (s_0 - s_f) * (1 - t/T)^3`` — fast early, gentle near the end.

>>> [round(cubic_sparsity(t, 4, 0.8), 3) for t in range(5)]
[0.0, 0.463, 0.7, 0.788, 0.8]
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.prune.configs import Magnitude
from bitladder.methods.prune.magnitude import prune


def cubic_sparsity(step: int, steps: int, final: float, initial: float = 0.0) -> float:
    """Sparsity at ``step`` of ``steps`` on the cubic ramp ``initial`` -> ``final``; BitladderError out of range."""
    if steps < 1 or not 0 <= step <= steps:
        raise BitladderError(f"step must be in [0, {steps}] with steps >= 1, got {step}")
    return final + (initial - final) * (1 - step / steps) ** 3


def gradual_prune(model: nn.Module, final: Magnitude, steps: int, tune: Callable[[nn.Module], nn.Module],
                  initial: float = 0.0) -> nn.Module:
    """Prune to the schedule's sparsity at each of ``steps`` steps, calling ``tune(model)`` after each.

    Magnitude pruning re-ranks the surviving weights at every step (zeros stay zero: they rank first).
    """
    for t in range(1, steps + 1):
        model = prune(model, Magnitude(cubic_sparsity(t, steps, final.sparsity, initial), final.scope))
        model = tune(model)
    return model
