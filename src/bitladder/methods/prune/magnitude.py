"""Magnitude pruning: unstructured (per layer or global threshold) and N:M, in place on a copy.

Pruned weights become exact zeros; quantising the model afterwards stores them as a bitmask where
that is smaller (:mod:`bitladder.tensor.sparse`), so the artifact really shrinks.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.prune.configs import NM, Magnitude
from bitladder.methods.quantize.api import plan
from bitladder.nn.select import Selector
from bitladder.nn.records import in_axis as weight_in_axis

log = logging.getLogger("bitladder")


def _kth(values: torch.Tensor, k: int) -> float:
    return float(values.kthvalue(k).values) if k > 0 else -1.0


def _nm_mask(w: torch.Tensor, n: int, m: int, in_axis: int) -> torch.Tensor:
    rows = w.detach().abs().movedim(in_axis, -1)
    k = rows.shape[-1]
    if k % m:
        raise BitladderError(f"N:M {n}:{m} needs the input dimension to be a multiple of {m}, got {k}")
    groups = rows.reshape(*rows.shape[:-1], k // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(rows.shape).movedim(-1, in_axis)


def prune(model: nn.Module, config: Magnitude | NM, include: Selector = None, exclude: Selector = None,
          inplace: bool = False) -> nn.Module:
    """Zero weights of every selected layer that has a quantisation handler (Linear, Conv, Embedding)."""
    if not isinstance(config, Magnitude | NM):
        raise BitladderError(f"config must be Magnitude or NM; got {type(config).__name__}")
    model = model if inplace else copy.deepcopy(model)
    single = not list(model.children())
    names = [""] if single else list(plan(model, include, exclude).targets)
    if not names:
        raise BitladderError("no prunable layers selected (Linear, Conv1d, Conv2d, Embedding)")
    layers = {n: model.get_submodule(n) if n else model for n in names}
    with torch.no_grad():
        if isinstance(config, NM):
            for name, m in layers.items():
                in_axis = weight_in_axis(m)
                if isinstance(m, nn.Embedding):
                    log.info("N:M skips embedding %s", name)
                    continue
                w = m.weight if m.weight.dim() == 2 else m.weight.flatten(1)
                if w.shape[in_axis if w.dim() == 2 and m.weight.dim() == 2 else 1] % config.m:
                    log.warning("N:M %d:%d skips %s: its input size is not a multiple of %d", config.n, config.m,
                                name, config.m)
                    continue
                mask = _nm_mask(w, config.n, config.m, in_axis if m.weight.dim() == 2 else 1)
                m.weight.mul_(mask.reshape(m.weight.shape))
        elif config.scope == "global":
            mags = torch.cat([m.weight.detach().abs().reshape(-1) for m in layers.values()])
            t = _kth(mags, int(config.sparsity * mags.numel()))
            for m in layers.values():
                m.weight.mul_(m.weight.abs() > t)
        else:
            for m in layers.values():
                a = m.weight.detach().abs().reshape(-1)
                t = _kth(a, int(config.sparsity * a.numel()))
                m.weight.mul_(m.weight.abs() > t)
    return model


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros per prunable layer."""
    return {n: float((model.get_submodule(n).weight == 0).float().mean()) for n in plan(model).targets}
