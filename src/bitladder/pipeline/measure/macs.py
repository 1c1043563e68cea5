"""Multiply-accumulates of Conv/Linear layers (and their quantised versions) on one input, counted
from the output shapes seen by forward hooks; zeros from unstructured pruning are counted as work
(dense kernels do them), so only physical removal lowers the count.

>>> import torch
>>> count_macs(torch.nn.Linear(10, 4), torch.randn(3, 10))
120
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bitladder.nn.layers import QuantConv1d, QuantConv2d, QuantLinear
from bitladder.nn.select import run


@torch.inference_mode()
def count_macs(model: nn.Module, batch: Any) -> int:
    """Multiply-accumulates of the Linear / Conv layers (float or quantised) in one forward pass on ``batch``."""
    total = 0

    def hook(m, args, out):
        nonlocal total
        w = m.weight if isinstance(m.weight, torch.Tensor) else None
        shape = tuple(w.shape) if w is not None else tuple(m.qmeta["shape"])
        per_out = math.prod(shape[1:]) if len(shape) > 2 else shape[1]
        if getattr(m, "groups", 1) > 1 and len(shape) > 2:
            per_out = math.prod(shape[1:])
        total += out.numel() * per_out

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, QuantLinear, QuantConv1d, QuantConv2d)
    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        run(model, batch)
    finally:
        for h in hooks:
            h.remove()
    return total
