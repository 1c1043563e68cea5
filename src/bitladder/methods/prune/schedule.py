"""Gradual pruning on the cubic schedule of Zhu & Gupta (2017), with fine-tuning between steps:
``s_t = s_f + (s_0 - s_f) * (1 - t/T)^3`` — fast early, gentle near the end. Unstructured
(:func:`gradual_prune`) or by channel groups toward a channel, FLOPs or parameter target
(:func:`iterative_channel_prune`).

>>> [round(cubic_sparsity(t, 4, 0.8), 3) for t in range(5)]
[0.0, 0.463, 0.7, 0.788, 0.8]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.prune.configs import Magnitude
from bitladder.methods.prune import budget
from bitladder.methods.prune.magnitude import prune
from bitladder.methods.prune.structured import ChannelPrune, prune_channels


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


def iterative_channel_prune(model: nn.Module, final: ChannelPrune, example, steps: int,
                            tune: Callable[[nn.Module], nn.Module], **kw) -> tuple[nn.Module, list[dict]]:
    """Prune → ``tune`` ``steps`` times on the cubic schedule until ``final.ratio`` of the original model's
    channels, FLOPs or parameters (``final.target``, measured) are gone; returns the model and each step's
    report. ``kw`` goes to :func:`prune_channels` (labels, include / exclude, taylor batches)."""
    small = budget.head(example)
    orig = budget.measure(model, small, final.target)
    reports, done = [], 0.0
    for t in range(1, steps + 1):
        goal = cubic_sparsity(t, steps, final.ratio)
        if final.target == "channels":
            rel = 1 - (1 - goal) / (1 - done)
        else:  # relative to what is left now, as measured
            rel = 1 - (1 - goal) * orig / budget.measure(model, small, final.target)
        model, report = prune_channels(model, replace(final, ratio=min(max(rel, 0.0), 0.99)), example, **kw)
        model = tune(model)
        reports.append(report)
        done = goal
    return model, reports
