"""Channel groups: every tensor dimension that must shrink together, as a union-find over channel spaces.

A *space* is one layer's output channels (or a layer's inner heads). Coupled spaces (the inputs of a residual
add, a depthwise convolution's input and output, a grouped convolution's input and output group by group)
join one *group* of ``n`` units; space ``s`` of ``size`` channels gives ``size / n`` channels to each unit
(a head is one unit of ``head_dim`` channels; a convolution of ``g`` groups couples ``g`` units). A *member*
is where a space lies on one axis of one layer: an offset (a concatenation places its inputs side by side)
and a block (flatten gives each channel ``block`` features). A group that reaches something that cannot
shrink (the model's input or output, an op not understood) is frozen with the reason.

>>> sp = Spaces()
>>> a, b = sp.new(8), sp.new(8)
>>> sp.couple(a, b)  # a residual add
>>> sp.find(a) == sp.find(b), sp.units(a)
(True, 8)
>>> c = sp.new(16); sp.couple(b, c, units=4)  # a grouped convolution, 4 groups
>>> sp.units(a), sp.width(c)
(4, 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bitladder.methods.prune.handlers import handler_for


@dataclass(frozen=True)
class Member:
    """Space ``space`` occupies positions ``offset + c * block + [0, block)`` on ``axis`` of ``layer``."""

    layer: str
    axis: str
    offset: int
    block: int
    space: int


class Spaces:
    """Union-find over channel spaces, with the members and freeze reasons of each group."""

    def __init__(self) -> None:
        self.size: list[int] = []
        self._parent: list[int] = []
        self._units: dict[int, int] = {}
        self.reason: dict[int, str] = {}
        self.members: list[Member] = []
        self._at: dict[tuple, int] = {}

    def new(self, size: int, reason: str | None = None) -> int:
        """A fresh space of ``size`` channels (frozen with ``reason`` if given)."""
        self.size.append(int(size))
        self._parent.append(len(self._parent))
        s = len(self.size) - 1
        self._units[s] = int(size)
        if reason:
            self.reason[s] = reason
        return s

    def find(self, s: int) -> int:
        """The root space of the group of ``s``."""
        while self._parent[s] != s:
            self._parent[s] = self._parent[self._parent[s]]
            s = self._parent[s]
        return s

    def units(self, s: int) -> int:
        """Units of the group of ``s``."""
        return self._units[self.find(s)]

    def width(self, s: int) -> int:
        """Channels of space ``s`` per unit."""
        return self.size[s] // self.units(s)

    def couple(self, a: int, b: int, units: int | None = None) -> None:
        """Join the groups of ``a`` and ``b`` (unit ``u`` of one is unit ``u`` of the other); ``units``: the
        coupling is by ``units`` blocks only (a grouped convolution)."""
        ra, rb = self.find(a), self.find(b)
        n = math.gcd(self._units[ra], self._units[rb], units or 0)
        if ra != rb:
            self._parent[rb] = ra
            if rb in self.reason:
                self.reason.setdefault(ra, self.reason.pop(rb))
        self._units[ra] = n

    def freeze(self, s: int, reason: str) -> None:
        """Leave the group of ``s`` unpruned, for ``reason`` (the first reason given is kept)."""
        self.reason.setdefault(self.find(s), reason)

    def add(self, layer: str, axis: str, offset: int, block: int, space: int) -> None:
        """Record a member; a layer called twice joins its two spaces at the same place."""
        key = (layer, axis, offset)
        if key in self._at:
            self.couple(self._at[key], space)
            return
        self._at[key] = space
        self.members.append(Member(layer, axis, offset, block, space))

    def roots(self) -> list[int]:
        """The groups, by root space, in order of creation."""
        return sorted({self.find(s) for s in range(len(self.size))})


def _positions(m: Member, channels: torch.Tensor) -> torch.Tensor:
    return (m.offset + channels[:, None] * m.block + torch.arange(m.block)[None, :]).reshape(-1)


def unit_scores(model: nn.Module, sp: Spaces, importance: str) -> dict[int, torch.Tensor]:
    """Per group (by root): each unit's score, the mean over members of the member's norms there, each member
    normalised by its own mean first (so a 3x3 convolution and a BatchNorm weigh the same)."""
    total: dict[int, torch.Tensor] = {}
    count: dict[int, int] = {}
    for m in sp.members:
        layer = model.get_submodule(m.layer)
        full = handler_for(layer).score(layer, m.axis, importance).float()
        size = sp.size[m.space]
        vec = full[m.offset : m.offset + size * m.block].reshape(size, m.block).sum(1)
        vec = vec / vec.mean().clamp_min(1e-12)
        root, n = sp.find(m.space), sp.units(m.space)
        per_unit = vec.reshape(n, -1).mean(1)
        total[root] = total.get(root, 0) + per_unit
        count[root] = count.get(root, 0) + 1
    return {r: t / count[r] for r, t in total.items()}


def apply(model: nn.Module, sp: Spaces, keep_units: dict[int, torch.Tensor]) -> None:
    """Slice every member of every group in ``keep_units`` (root -> kept unit indices), each axis once."""
    spans: dict[tuple[str, str], list[tuple[int, int, torch.Tensor]]] = {}
    for m in sp.members:
        size, root = sp.size[m.space], sp.find(m.space)
        if root in keep_units:
            w = sp.width(m.space)
            ch = (keep_units[root][:, None] * w + torch.arange(w)[None, :]).reshape(-1)
        else:
            ch = torch.arange(size)
        spans.setdefault((m.layer, m.axis), []).append((m.offset, m.offset + size * m.block, _positions(m, ch)))
    for (name, axis), parts in spans.items():
        if all(len(p[2]) == p[1] - p[0] for p in parts):
            continue  # nothing removed on this axis
        parts.sort(key=lambda p: p[0])
        idx, pos = [], 0
        for lo, hi, kept in parts:  # a gap no member covers is kept whole
            idx += [torch.arange(pos, lo), kept]
            pos = max(pos, hi)
        layer = model.get_submodule(name)
        h = handler_for(layer)
        idx.append(torch.arange(pos, len(h.score(layer, axis, "l1"))))
        h.keep(layer, axis, torch.cat(idx).long())
