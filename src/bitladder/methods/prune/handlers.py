"""How each prunable layer type is scored and sliced along one of its channel axes, registered by module type.

An axis is "out" (what the layer produces), "in" (what it consumes), "chan" (a per-channel layer: BatchNorm,
LayerNorm) or "heads" (an attention block's inner head dimension). A handler has two methods: ``score``
(a per-position vector along the axis: L1 or L2 of the weights there, or |sum w * dL/dw| for taylor) and
``keep`` (keep only the positions ``idx`` along the axis, in place). User layers register the same way
(:func:`register`); an attention block registers with :class:`Attention` naming its q/k/v/o Linears.

>>> lin = nn.Linear(4, 3)
>>> HANDLERS[nn.Linear].keep(lin, "in", torch.tensor([0, 2]))
>>> lin.weight.shape, lin.in_features
(torch.Size([3, 2]), 2)
"""

from __future__ import annotations

import abc

from dataclasses import dataclass

import torch
from torch import nn

from bitladder.methods.prune.transformer import keep_cols, keep_qkvo_heads, keep_rows

#: module type -> handler; looked up by exact type first, then by isinstance in registration order
HANDLERS: dict[type, Handler] = {}


def register(kind: type, handler: "Handler") -> None:
    """Register ``handler`` (``score`` + ``keep``) for modules of type ``kind``."""
    HANDLERS[kind] = handler


def handler_for(m: nn.Module):
    """The handler of ``m``'s type, or None."""
    h = HANDLERS.get(type(m))
    return h if h is not None else next((h for k, h in HANDLERS.items() if isinstance(m, k)), None)


def _term(w: torch.Tensor, importance: str) -> torch.Tensor:
    if importance == "taylor":
        return (w * w.grad).detach() if w.grad is not None else torch.zeros_like(w)
    return w.detach().abs() if importance == "l1" else w.detach().pow(2)


def _along(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Sum of ``t`` over every dim except ``axis`` (taylor terms are summed first, then |.|)."""
    return t.movedim(axis, 0).reshape(t.shape[axis], -1).sum(1)


def _score(w: torch.Tensor, axis: int, importance: str) -> torch.Tensor:
    s = _along(_term(w, importance), axis)
    return s.abs() if importance == "taylor" else s


@torch.no_grad()
def _param(m: nn.Module, name: str, idx: torch.Tensor, axis: int = 0) -> None:
    t = getattr(m, name)
    if t is not None:
        setattr(m, name, nn.Parameter(t.index_select(axis, idx).clone(), requires_grad=t.requires_grad))


class Handler(abc.ABC):
    """How one layer type is scored and sliced along its channel axes."""

    @abc.abstractmethod
    def score(self, m: nn.Module, axis: str, importance: str) -> torch.Tensor:
        """One importance value per position along ``axis`` of ``m``."""

    @abc.abstractmethod
    def keep(self, m: nn.Module, axis: str, idx: torch.Tensor) -> None:
        """Keep only positions ``idx`` along ``axis`` of ``m``, in place."""


class Dense(Handler):
    """Linear and Conv1d/2d: "out" is weight dim 0 (+ bias), "in" weight dim 1 (grouped convolutions keep
    their per-group width and lose whole groups: ``groups`` follows)."""

    def score(self, m: nn.Module, axis: str, importance: str) -> torch.Tensor:
        if axis == "in" and getattr(m, "groups", 1) > 1:  # per group: a channel's weight is its group's
            return torch.ones(m.in_channels)
        return _score(m.weight, 0 if axis == "out" else 1, importance)

    def keep(self, m: nn.Module, axis: str, idx: torch.Tensor) -> None:
        if axis == "out":
            _param(m, "weight", idx)
            _param(m, "bias", idx)
            if isinstance(m, nn.Linear):
                m.out_features = len(idx)
            else:
                m.out_channels = len(idx)
        elif isinstance(m, nn.Linear):
            keep_cols(m, idx)
        elif m.groups == 1:
            _param(m, "weight", idx, axis=1)
            m.in_channels = len(idx)
        else:
            m.in_channels, m.groups = len(idx), len(idx) // m.weight.shape[1]


class Norm(Handler):
    """BatchNorm / LayerNorm over the channel dim: affine parameters and running statistics sliced."""

    def score(self, m: nn.Module, axis: str, importance: str) -> torch.Tensor:
        if getattr(m, "weight", None) is None:
            return torch.ones(self._size(m))
        return _score(m.weight, 0, importance)

    @staticmethod
    def _size(m: nn.Module) -> int:
        return m.num_features if hasattr(m, "num_features") else m.normalized_shape[0]

    def keep(self, m: nn.Module, axis: str, idx: torch.Tensor) -> None:
        _param(m, "weight", idx)
        _param(m, "bias", idx)
        if isinstance(m, nn.LayerNorm):
            m.normalized_shape = (len(idx),)
            return
        if m.running_mean is not None:
            m.running_mean, m.running_var = m.running_mean[idx].clone(), m.running_var[idx].clone()
        m.num_features = len(idx)


@dataclass(frozen=True)
class Attention(Handler):
    """A self-attention block with four Linears (child names ``q``, ``k``, ``v``, ``o``) whose forward
    reshapes with ``-1`` heads of ``head_dim``: "in" is the q/k/v columns, "out" the o rows, "heads" whole
    heads (q/k/v rows and o columns together, as :mod:`bitladder.methods.prune.transformer` prunes BERT)."""

    q: str = "q"
    k: str = "k"
    v: str = "v"
    o: str = "o"
    head_dim: str = "head_dim"  # attribute holding the width of one head
    heads: str | None = "heads"  # attribute holding the head count, updated when heads go (None: none)

    def parts(self, m: nn.Module) -> tuple[nn.Linear, ...]:
        """(q, k, v, o) of ``m``."""
        return tuple(m.get_submodule(n) for n in (self.q, self.k, self.v, self.o))

    def width(self, m: nn.Module) -> int:
        """Channels per head."""
        return int(getattr(m, self.head_dim))

    def score(self, m: nn.Module, axis: str, importance: str) -> torch.Tensor:
        q, k, v, o = self.parts(m)
        if axis == "in":
            return sum(_score(x.weight, 1, importance) for x in (q, k, v))
        if axis == "out":
            return _score(o.weight, 0, importance)
        return sum(_score(x.weight, 0, importance) for x in (q, k, v)) + _score(o.weight, 1, importance)

    def keep(self, m: nn.Module, axis: str, idx: torch.Tensor) -> None:
        q, k, v, o = self.parts(m)
        if axis == "in":
            for x in (q, k, v):
                keep_cols(x, idx)
        elif axis == "out":
            keep_rows(o, idx)
        else:
            d = self.width(m)
            keep_qkvo_heads(q, k, v, o, idx.reshape(-1, d)[:, 0] // d, d)
            if self.heads:
                setattr(m, self.heads, len(idx) // d)


for _kind in (nn.Linear, nn.Conv1d, nn.Conv2d):
    register(_kind, Dense())
for _kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm):
    register(_kind, Norm())
