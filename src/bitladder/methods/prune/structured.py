"""Structured pruning by dependency groups: channels removed physically from every layer they couple.

The model is traced with torch.fx (:mod:`~bitladder.methods.prune.graph`): a layer's output channels, the
inputs of a residual add, the slices of a concatenation, a depthwise or grouped convolution's input and
output, the BatchNorm / LayerNorm over them, the features a flatten gives a Linear and the heads of a
registered attention block form *groups* that shrink together (the idea of Torch-Pruning's DepGraph).
BERT-style encoders, which fx cannot trace, are grouped by layer: heads and FFN neurons
(:mod:`~bitladder.methods.prune.transformer`). A group scores as one; the same units go from all members.
What cannot shrink (the model's input and output, an op no rule models) is left whole and named in the
report; a model fx cannot trace is refused with the layer that stopped it. The pruned model is run on the
example before it is returned: it always runs, with the same output shape.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> p, report = prune_channels(m, ChannelPrune(ratio=0.5), torch.randn(2, 8))
>>> p[0].out_features, p[2].in_features, report["pruned"]
(8, 8, {'0': (16, 8)})
>>> p, report = prune_channels(m, ChannelPrune(ratio=0.5, target="params"), torch.randn(2, 8))
>>> report["params"][1] <= report["params"][0] // 2
True
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.kernels.cpu import current
from bitladder.methods.prune import budget, sources

TARGETS = ("channels", "flops", "params")


@dataclass(frozen=True)
class ChannelPrune:
    """Remove ``ratio`` of each group's channels (``target="channels"``), or channels of the least important
    groups over the whole model until FLOPs or parameters fall by ``ratio`` (``"flops"`` / ``"params"``,
    measured), no group losing more than ``max_group`` of its units. Importance: "l1", "l2" (weight norms,
    each member normalised by its mean) or "taylor" (|sum over the channel of w * dL/dw|, Molchanov 2019).
    ``latency=True`` (global targets): each unit's importance is divided by the time its group's units save,
    measured on the example on this machine (:func:`~bitladder.methods.prune.budget.latency_weights`), so
    the same FLOPs come out where they cost the most time, in the spirit of HALP (Shen et al. 2022); then the
    search's candidates that remove about the least importance (within 5 %) are timed and the fastest kept.
    ``round_to``: what each layer keeps is a multiple of this many channels (a head counts ``head_dim``), or
    ``"simd"``: the CPU's fp32 vector width (16 with AVX-512, 8 with AVX2, else 4), since vectorised kernels
    pad a channel count to it (Torch-Pruning's ``round_to``)."""

    ratio: float = 0.5
    importance: str = "l1"
    target: str = "channels"
    max_group: float = 0.9
    latency: bool = False
    round_to: int | str = 1
    version: ClassVar[int] = 4

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0 <= self.ratio < 1:
            raise BitladderError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.importance not in ("l1", "l2", "taylor"):
            raise BitladderError(f"importance must be 'l1', 'l2' or 'taylor', got {self.importance!r}")
        if self.target not in TARGETS:
            raise BitladderError(f"target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if not isinstance(self.max_group, int | float) or not 0 < self.max_group < 1:
            raise BitladderError(f"max_group must be in (0, 1), got {self.max_group!r}")
        if not isinstance(self.latency, bool):
            raise BitladderError(f"latency must be true or false, got {self.latency!r}")
        if self.latency and self.target == "channels":
            raise BitladderError("latency weighs units against each other under a global budget; use target "
                                 "'flops' or 'params' with it (target 'channels' prunes each group alike)")
        if self.round_to != "simd" and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                        or self.round_to < 1):
            raise BitladderError(f"round_to must be an integer >= 1 or 'simd', got {self.round_to!r}")

    def lanes(self) -> int:
        """``round_to`` in channels, ``"simd"`` read from the CPU as kernels see it (``BITLADDER_CPU`` included)."""
        if self.round_to != "simd":
            return self.round_to
        cpu = current()
        return 16 if cpu.has("avx512f") else 8 if cpu.has("avx2") else 4

    def to_dict(self) -> dict:
        """The config as a dict with its ``type`` and ``version``, as artifacts record it."""
        return {"type": "ChannelPrune", "version": self.version, **asdict(self)}


def _is_encoder(model: nn.Module) -> bool:
    try:
        sources.encoder_layers(model)
    except BitladderError:
        return False
    return True


def _grads(model: nn.Module, example, target: torch.Tensor | None) -> None:
    if target is None:
        raise BitladderError("taylor importance needs labels: pass target= (class indices for the example)")
    model.zero_grad()
    nn.functional.cross_entropy(budget.call(model, example), target).backward()


def _shapes(out) -> object:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: _shapes(v) for k, v in out.items()}
    return [_shapes(v) for v in out] if isinstance(out, list | tuple) else type(out).__name__


def prune_channels(model: nn.Module, config: ChannelPrune, example, target: torch.Tensor | None = None,
                   include: list[str] | None = None, exclude: list[str] | None = None, batches=None,
                   metric: str = "cosine"):
    """A copy of ``model`` with channels removed, and a report: "pruned" {layer: (before, after)}, "skipped"
    {layer: reason}, "flops" and "params" (before, after; measured on ``example``'s first rows), "groups",
    "importance_lost" (the removed units' scores, each group's mean 1) and, for a global target, "candidates"
    (each search round's cost and importance lost).
    ``target``: labels for ``example`` (taylor on a traced model); ``batches`` / ``metric``: taylor on an encoder
    (self-distillation, see :mod:`~bitladder.methods.prune.transformer`)."""
    model = copy.deepcopy(model).eval()
    small = budget.head(example)
    with torch.no_grad():
        ref = _shapes(budget.call(model, small))
    if _is_encoder(model):
        source = sources.from_encoder(model, config.importance, batches, metric, include, exclude)
    else:
        if isinstance(example, dict):
            raise BitladderError("channel pruning traces a model called on positional tensors; this model takes "
                                 "keyword inputs and is not a BERT-style encoder (use method: magnitude or nm)")
        if config.importance == "taylor":
            _grads(model, example, target)
        source = sources.from_graph(model, small, config.importance, include, exclude)
        model.zero_grad(set_to_none=True)
    before = source.sizes(model)
    cost0 = {"flops": budget.flops(model, small), "params": budget.params(model)}
    lanes = config.lanes()
    found = []
    if config.target == "channels":
        keep = budget.per_group(source.groups, config.ratio, lanes)
    else:
        weights = (budget.latency_weights(model, source.apply, source.groups, example, config.max_group,
                                          round_to=lanes) if config.latency else None)
        seq = budget.order(source.groups, config.max_group, weights, lanes)
        goal = (1 - config.ratio) * cost0[config.target]
        found = budget.prefixes(model, source.apply, seq, goal, lambda m: budget.measure(m, small, config.target),
                                tol=0.02 * cost0[config.target])
        keep, _ = (budget.fastest(model, source.apply, source.groups, found, goal, example) if config.latency
                   else budget.closest(found, goal))
    source.apply(model, keep)
    _verify(model, small, ref)
    after = source.sizes(model)
    report = {"pruned": {n: (before[n], after[n]) for n in before if after[n] < before[n]},
              "skipped": dict(source.skipped),
              "flops": (cost0["flops"], budget.flops(model, small)),
              "params": (cost0["params"], budget.params(model)),
              "importance_lost": budget.lost(source.groups, keep),
              "candidates": [{config.target: c, "importance_lost": budget.lost(source.groups, k)} for k, c in found],
              "groups": [{"layers": g.layers, "units": g.n, "kept": len(keep[g.key]) if g.key in keep else g.n}
                         for g in source.groups]}
    return model, report


def _verify(model: nn.Module, example, ref) -> None:
    try:
        with torch.no_grad():
            got = _shapes(budget.call(model, example))
    except Exception as e:
        raise BitladderError(f"the pruned model fails on the example input ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''}); please report this") from None
    if got != ref:
        raise BitladderError(f"the pruned model's output shape changed ({ref} -> {got}); please report this")
