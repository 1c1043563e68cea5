"""Bi-Real Net's real-valued shortcuts (Liu et al. 2018) around low-bit layers.

A binary layer loses most of its input's information; a parameter-free shortcut carries the real-valued
input past it: ``y = layer(x) + P(x)``. ``P`` is the identity when the layer keeps the shape, repeats the
channels when the layer multiplies them by an integer (ReActNet's duplication, Liu et al. 2020), and
averages groups of channels when the layer divides them. Convolutions need stride 1 and "same" padding.
The shortcut costs no weights and one addition; it is recorded in artifacts (:mod:`bitladder.io.structure`).

>>> import torch
>>> m = RealShortcut(torch.nn.Linear(4, 8))
>>> m.mode, tuple(m(torch.ones(2, 4)).shape)
('tile', (2, 8))
"""

from __future__ import annotations

from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.records import build_layer, layer_args
from bitladder.nn.structures import structure


def shortcut_mode(layer: nn.Module) -> str | None:
    """"identity", "tile", "mean", or None when no parameter-free shortcut fits the layer's shapes."""
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        same = all(s == 1 and d == 1 and k % 2 == 1 and p == (k - 1) // 2 for s, d, k, p in
                   zip(layer.stride, layer.dilation, layer.kernel_size, layer.padding, strict=True)) \
            if not isinstance(layer.padding, str) else layer.padding == "same"
        if not same or layer.groups != 1:
            return None
        n_in, n_out = layer.in_channels, layer.out_channels
    elif isinstance(layer, nn.Linear):
        n_in, n_out = layer.in_features, layer.out_features
    else:
        return None
    if n_in == n_out:
        return "identity"
    if n_out % n_in == 0:
        return "tile"
    return "mean" if n_in % n_out == 0 else None


def shortcut_record(layer: nn.Module) -> dict:
    """The shortcut's mode and the float layer's constructor record (what an artifact stores)."""
    mode = shortcut_mode(layer)
    if mode is None:
        raise BitladderError(f"no parameter-free shortcut fits {type(layer).__name__} {tuple(layer.weight.shape)}: "
                             "it needs equal or integer-multiple channel counts (convolutions: stride 1, "
                             "'same' padding, groups 1)")
    kind, args = layer_args(layer)
    return {"mode": mode, "inner": {"type": kind, "args": args}}


@structure
class RealShortcut(nn.Module):
    """``layer(x) + P(x)`` with the parameter-free projection ``P`` of :func:`shortcut_mode`; ``layer``
    may be a fake-quantised or packed version of the float layer ``record`` describes."""

    def __init__(self, layer: nn.Module, record: dict | None = None) -> None:
        super().__init__()
        self.record_ = shortcut_record(layer) if record is None else record
        self.layer, self.mode = layer, self.record_["mode"]
        self.channel_dim = -1 if self.record_["inner"]["type"] == "Linear" else 1

    def forward(self, x):
        y = self.layer(x)
        d = self.channel_dim % x.dim()
        n_in, n_out = x.shape[d], y.shape[d]
        if self.mode == "tile":
            reps = [1] * x.dim()
            reps[d] = n_out // n_in
            return y + x.repeat(*reps)
        if self.mode == "mean":
            return y + x.unflatten(d, (n_out, n_in // n_out)).mean(d + 1)
        return y + x

    def record(self) -> dict:
        """The record it was built from (taken from the float layer it wraps)."""
        return self.record_

    @classmethod
    def from_record(cls, args: dict) -> RealShortcut:
        """A fresh shortcut around a fresh float layer, from :meth:`record`'s data."""
        return cls(build_layer(args["inner"]["type"], args["inner"]["args"]), args)

    def extra_repr(self) -> str:
        return f"shortcut={self.mode}"
