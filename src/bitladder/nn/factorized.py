"""Factorised layers: one dense layer replaced by a sequence of smaller real ones (low-rank methods
build them in :mod:`bitladder.methods.lowrank`; they quantise like any other layer)."""

from __future__ import annotations

import torch
from torch import nn

from bitladder.nn.structures import structure


@structure
class FactorizedLinear(nn.Module):
    """``second(first(x))``: in -> rank -> out."""

    def __init__(self, in_f: int, out_f: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.rank, self._args = rank, {"in_f": in_f, "out_f": out_f, "rank": rank, "bias": bias}
        self.first = nn.Linear(in_f, rank, bias=False)
        self.second = nn.Linear(rank, out_f, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def record(self) -> dict:
        """Constructor arguments (what an artifact stores; kept, since quantised factors lose them)."""
        return dict(self._args)

    @classmethod
    def from_record(cls, args: dict) -> FactorizedLinear:
        """A fresh module from :meth:`record`'s arguments."""
        return cls(**args)


@structure
class FactorizedConv2d(nn.Module):
    """A sequence of real convs standing for one: tucker2 (1x1, k x k, 1x1) or separable (depthwise, 1x1)."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, kernel_size: list, stride: list,
                 padding: list, dilation: list, ranks: list, bias: bool) -> None:
        super().__init__()
        self.kind, self.ranks = kind, list(ranks)
        self._args = {"kind": kind, "in_channels": in_channels, "out_channels": out_channels,
                      "kernel_size": list(kernel_size), "stride": list(stride), "padding": list(padding),
                      "dilation": list(dilation), "ranks": list(ranks), "bias": bias}
        k, s, p, d = tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation)
        if kind == "tucker2":
            r_in, r_out = ranks
            self.first = nn.Conv2d(in_channels, r_in, 1, bias=False)
            self.core = nn.Conv2d(r_in, r_out, k, s, p, d, bias=False)
            self.last = nn.Conv2d(r_out, out_channels, 1, bias=bias)
        else:
            self.first = nn.Conv2d(in_channels, in_channels, k, s, p, d, groups=in_channels, bias=False)
            self.last = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        if self.kind == "tucker2":
            x = self.core(x)
        return self.last(x)

    def args(self) -> dict:
        """Constructor arguments (what an artifact stores; kept, since quantised convs lose them)."""
        return dict(self._args)

    record = args

    @classmethod
    def from_record(cls, args: dict) -> FactorizedConv2d:
        """A fresh module from :meth:`record`'s arguments."""
        return cls(**args)
