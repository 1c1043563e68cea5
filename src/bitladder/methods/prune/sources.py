"""Where pruning groups come from: a torch.fx channel graph, or the layers of a BERT-style encoder (which fx
cannot trace: its heads and FFN neurons are grouped by :mod:`bitladder.methods.prune.transformer`).

Both give the same thing: :class:`Group` s (units, a score per unit with mean 1, the layers they shrink), the
layers left unpruned with the reason, and ``apply(model, keep)`` that removes the same units from every member.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from fnmatch import fnmatch

import torch
from torch import nn

from bitladder.methods.prune import graph, groups
from bitladder.methods.prune.handlers import handler_for
from bitladder.methods.prune.transformer import HeadFFNPrune, encoder_layers, head_ffn_scores, keep_ffn, keep_heads

log = logging.getLogger("bitladder")


@dataclass
class Group:
    """``n`` units that go together, each with a score (mean 1 over the group); ``layers``: what it shrinks;
    ``width``: channels per unit that every member's count is a multiple of (a head is ``head_dim``)."""

    key: object
    n: int
    scores: torch.Tensor
    layers: list[str]
    width: int = 1


@dataclass
class Source:
    """The groups of one model, the layers left unpruned (name -> reason), and how to apply a choice."""

    groups: list[Group]
    skipped: dict[str, str] = field(default_factory=dict)
    spaces: groups.Spaces | None = None

    def sizes(self, model: nn.Module) -> dict[str, int]:
        """Units now in each layer the groups shrink: output channels, heads or FFN neurons."""
        out = {}
        for label in (name for g in self.groups for name in g.layers):
            base, _, kind = label.rpartition(":")
            if self.spaces is None:
                layer = model.get_submodule(base)
                out[label] = (layer.attention.self.num_attention_heads if kind == "heads"
                              else layer.intermediate.dense.out_features)
                continue
            name = base or label
            layer = model.get_submodule(name)
            h = handler_for(layer)
            n = len(h.score(layer, "heads" if kind == "heads" else "out", "l1"))
            out[label] = n // h.width(layer) if kind == "heads" else n
        return out

    def apply(self, model: nn.Module, keep: dict[object, torch.Tensor]) -> None:
        """Keep only units ``keep[key]`` of each group, in place."""
        if self.spaces is not None:
            groups.apply(model, self.spaces, keep)
            return
        for (name, kind), idx in keep.items():
            layer = model.get_submodule(name)
            (keep_heads if kind == "heads" else keep_ffn)(layer, idx)


def _selected(names: tuple[str, ...], include: list[str] | None, exclude: list[str] | None) -> bool:
    hit = lambda pats: any(fnmatch(n, p) for n in names for p in pats)
    return (not include or hit(include)) and not hit(exclude or [])


def from_graph(model: nn.Module, example, importance: str, include=None, exclude=None) -> Source:
    """Groups of a traceable model (taylor: the weights' ``.grad`` must be filled already)."""
    _, sp = graph.build(model, example)
    producers: dict[int, list[str]] = {}
    for m in sp.members:
        if m.axis in ("out", "heads"):
            producers.setdefault(sp.find(m.space), []).append(m.layer + (":heads" if m.axis == "heads" else ""))
    for root, names in producers.items():
        off = [n for n in names if not _selected((n, n.removesuffix(":heads")), include, exclude)]
        if off:
            sp.freeze(root, f"{off[0]} is not selected (include / exclude)")
        elif sp.units(root) < 2:
            sp.freeze(root, "its channels are coupled into one unit (grouped convolutions)")
    scores = groups.unit_scores(model, sp, importance)
    widths: dict[int, int] = {}
    for m in sp.members:
        root = sp.find(m.space)
        widths[root] = math.gcd(widths.get(root, 0), sp.width(m.space))
    out = Source([], spaces=sp)
    for root, names in producers.items():
        if root in sp.reason:
            out.skipped.update({n: sp.reason[root] for n in names})
        else:
            out.groups.append(Group(root, sp.units(root), scores[root], names, widths.get(root, 1) or 1))
    return out


def from_encoder(model: nn.Module, importance: str, batches=None, metric: str = "cosine",
                 include=None, exclude=None) -> Source:
    """Heads and FFN neurons of each BERT-style layer, as groups."""
    from bitladder.methods.prune.transformer import taylor_scores

    layers = encoder_layers(model)
    if importance == "taylor" and not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        log.warning("taylor importance: the encoder has no dropout, so its self-distillation gradient is zero; "
                    "using l1")
        importance = "l1"
    if importance == "taylor":
        raw = taylor_scores(model, layers, batches or [], HeadFFNPrune(importance="taylor"), metric)
    else:
        term = (lambda lin: lin.weight.abs()) if importance == "l1" else (lambda lin: lin.weight.pow(2))
        with torch.no_grad():
            raw = {name: head_ffn_scores(layer, term) for name, layer in layers}
    out = Source([])
    for name, layer in layers:
        for kind, s in zip(("heads", "ffn"), raw[name]):
            label = f"{name}:{kind}"
            if not _selected((label, name), include, exclude):
                out.skipped[label] = f"{label} is not selected (include / exclude)"
                continue
            width = layer.attention.self.attention_head_size if kind == "heads" else 1
            out.groups.append(Group((name, kind), len(s), s / s.mean().clamp_min(1e-12), [label], width))
    return out
