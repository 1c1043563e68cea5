"""Structured pruning that removes channels physically: Conv/Linear output channels (and the
matching inputs of whatever consumes them), traced with torch.fx.

The dependency walk follows each layer's output through channel-preserving ops (ReLU-like
activations, pooling, dropout, identity, BatchNorm, which is sliced too, and flatten, which maps a
channel to a block of features) to the weighted layers that consume it. A layer whose output reaches
anything else (a residual add, a concatenation, the model output) is not pruned and is named with the
reason. Importance: L1 or L2 norm of each output channel's weights.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> p, report = prune_channels(m, ChannelPrune(ratio=0.5), torch.randn(2, 8))
>>> p[0].out_features, p[2].in_features, report["pruned"]
(8, 8, {'0': (16, 8)})
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from bitladder.errors import BitladderError

PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.MaxPool1d, nn.MaxPool2d,
                nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity, nn.BatchNorm1d,
                nn.BatchNorm2d)
# element-wise or per-channel functions, by name (functional pooling is wrapped, so match names)
PASS_FUNCTIONS = {"relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "dropout", "max_pool1d", "max_pool2d",
                  "_max_pool1d", "_max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool2d", "flatten"}
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class ChannelPrune:
    """Remove ``ratio`` of the output channels of every prunable Conv/Linear. Importance: "l1", "l2"
    (weight norms) or "taylor" (|sum over the channel of w * dL/dw| on a labelled batch, Molchanov 2019)."""

    ratio: float = 0.5
    importance: str = "l1"
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise BitladderError(f"ratio must be in [0, 1), got {self.ratio}")
        if self.importance not in ("l1", "l2", "taylor"):
            raise BitladderError(f"importance must be 'l1', 'l2' or 'taylor', got {self.importance!r}")


def _consumers(gm: fx.GraphModule, node: fx.Node, mods: dict) -> tuple[list, list, str | None]:
    """(weighted consumers with their flatten factor, BatchNorms on the way, reason it cannot be pruned)."""
    out, bns, todo = [], [], [(u, 1) for u in node.users]
    while todo:
        u, factor = todo.pop()
        if u.op == "call_module":
            m = mods[u.target]
            if isinstance(m, WEIGHTED):
                if getattr(m, "groups", 1) != 1:
                    return [], [], f"feeds grouped convolution {u.target}"
                out.append((u.target, factor))
                continue
            if isinstance(m, nn.Flatten):
                factor = _flat_factor(u)
            elif not isinstance(m, PASS_MODULES):
                return [], [], f"feeds {type(m).__name__} {u.target}"
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                bns.append(u.target)
        elif u.op == "call_function" and getattr(u.target, "__name__", "") in PASS_FUNCTIONS:
            if u.target is torch.flatten:
                factor = _flat_factor(u)
        elif u.op == "call_method" and u.target in ("relu", "flatten", "view", "reshape"):
            if u.target != "relu":
                factor = _flat_factor(u)
        elif u.op == "output":
            return [], [], "its output is the model's output"
        else:
            name = getattr(u.target, "__name__", str(u.target))
            return [], [], f"feeds {name} ({u.name}): residual or concatenation needs grouped pruning"
        todo += [(v, factor) for v in u.users]
    return out, bns, None


def _flat_factor(node: fx.Node) -> int:
    src = node.args[0]
    shape = src.meta["tensor_meta"].shape
    return int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1


def _taylor_scores(model: nn.Module, example: torch.Tensor, target: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if target is None:
        raise BitladderError("taylor importance needs labels: pass target= (class indices for the example)")
    model.zero_grad()
    nn.functional.cross_entropy(model(example), target).backward()
    scores = {n: (m.weight * m.weight.grad).detach().reshape(m.weight.shape[0], -1).sum(1).abs()
              for n, m in model.named_modules() if isinstance(m, WEIGHTED) and m.weight.grad is not None}
    model.zero_grad()
    return scores


def prune_channels(model: nn.Module, config: ChannelPrune, example: torch.Tensor,
                   target: torch.Tensor | None = None):
    """A copy of ``model`` with channels removed, and a report {"pruned": {name: (before, after)},
    "skipped": {name: reason}}. ``target``: labels for ``example`` (taylor importance only)."""
    model = copy.deepcopy(model).eval()
    taylor = _taylor_scores(model, example, target) if config.importance == "taylor" else {}
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        raise BitladderError(f"cannot trace the model with torch.fx ({type(e).__name__}: {str(e)[:120]}); "
                             "structured pruning needs a traceable forward") from None
    ShapeProp(gm).propagate(example.detach())
    mods = dict(gm.named_modules())
    report: dict = {"pruned": {}, "skipped": {}}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods[node.target], WEIGHTED):
            continue
        name, layer = node.target, mods[node.target]
        cons, bns, reason = _consumers(gm, node, mods)
        if reason or not cons:
            report["skipped"][name] = reason or "no consumer"
            continue
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        if config.importance == "taylor":
            score = taylor[name]
        else:
            score = w.abs().sum(1) if config.importance == "l1" else w.pow(2).sum(1)
        n = w.shape[0]
        keep_n = max(1, n - int(config.ratio * n))
        keep = score.topk(keep_n).indices.sort().values
        _slice_out(model.get_submodule(name), keep)
        for bn in bns:
            _slice_bn(model.get_submodule(bn), keep)
        for cname, factor in cons:
            _slice_in(model.get_submodule(cname), keep, factor)
        report["pruned"][name] = (n, keep_n)
    return model, report


@torch.no_grad()
def _slice_out(m: nn.Module, keep: torch.Tensor) -> None:
    m.weight = nn.Parameter(m.weight[keep].clone())
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias[keep].clone())
    if isinstance(m, nn.Linear):
        m.out_features = len(keep)
    else:
        m.out_channels = len(keep)


@torch.no_grad()
def _slice_bn(bn: nn.Module, keep: torch.Tensor) -> None:
    for attr in ("weight", "bias"):
        if getattr(bn, attr) is not None:
            setattr(bn, attr, nn.Parameter(getattr(bn, attr)[keep].clone()))
    bn.running_mean, bn.running_var = bn.running_mean[keep].clone(), bn.running_var[keep].clone()
    bn.num_features = len(keep)


@torch.no_grad()
def _slice_in(m: nn.Module, keep: torch.Tensor, factor: int) -> None:
    if factor > 1:  # flatten: channel c owns input columns [c*factor, (c+1)*factor)
        keep = (keep[:, None] * factor + torch.arange(factor)[None, :]).reshape(-1)
    m.weight = nn.Parameter(m.weight[:, keep].clone())
    if isinstance(m, nn.Linear):
        m.in_features = len(keep)
    else:
        m.in_channels = len(keep)
