"""Activation observers: strategies that turn what a layer sees into a static scale and zero point.

All share one base class: ``update(x)`` with each calibration batch, then ``qparams(qtype,
symmetric)``. ``minmax`` (running extremes), ``ema`` (moving average of per-batch extremes),
``percentile`` (clip the tails), ``mse`` (the range minimising squared error on a sample) and
``kl`` (the TensorRT-style entropy threshold on a histogram of magnitudes).

>>> import torch
>>> from bitladder.formats.qtypes import QTYPES
>>> obs = make_observer("minmax")
>>> obs.update(torch.tensor([-1.0, 3.0]))
>>> s, z = obs.qparams(QTYPES["uint8"], symmetric=False)
>>> round(float(s), 5), int(z)
(0.01569, 64)
"""

from __future__ import annotations

import abc
import math

import torch

from bitladder.errors import BitladderError
from bitladder.formats.qtypes import QType
from bitladder.formats.quant import dequantize, quantize

SAMPLE = 200_000  # values kept for the sample-based observers


def _range_qparams(lo: float, hi: float, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        scale = max(abs(lo), abs(hi)) / qtype.qmax
        zp = 0.0
    else:
        scale = (hi - lo) / (qtype.qmax - qtype.qmin)
        zp = 0.0 if scale == 0 else round(qtype.qmin - lo / scale)
        zp = min(max(zp, qtype.qmin), qtype.qmax)
    scale = scale if scale > 0 else 1.0
    return torch.tensor(scale, dtype=torch.float32), torch.tensor(float(zp))


class Observer(abc.ABC):
    """Base of the activation observers: ``update`` with each calibration batch, then ``qparams``."""
    name = "base"

    @abc.abstractmethod
    def update(self, x: torch.Tensor) -> None:
        """Take one batch of activations."""

    def range(self) -> tuple[float, float]:
        """The (low, high) range to cover; observers that override ``qparams`` need not define it."""
        raise BitladderError(f"observer {self.name!r} chooses its qparams directly")

    def qparams(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) tensors putting :meth:`range` on ``qtype``'s grid, symmetric or not."""
        lo, hi = self.range()
        return _range_qparams(lo, hi, qtype, symmetric)


class MinMax(Observer):
    """Range: the running minimum and maximum of everything seen."""
    name = "minmax"

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def update(self, x: torch.Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def range(self) -> tuple[float, float]:
        if self.lo > self.hi:
            raise BitladderError("observer saw no data: the calibration batches never reached this layer")
        return self.lo, self.hi


class MovingAverage(MinMax):
    """Range: a moving average (weight ``momentum``) of each batch's minimum and maximum."""
    name = "ema"

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum

    def update(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        if self.lo > self.hi:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo, self.hi = (1 - m) * self.lo + m * lo, (1 - m) * self.hi + m * hi


class _Sampled(Observer):
    """Keeps a deterministic strided sample of the values seen (at most ``SAMPLE``)."""

    def __init__(self) -> None:
        self.parts: list[torch.Tensor] = []
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1).float()
        step = max(1, flat.numel() // (SAMPLE // 8))
        self.parts.append(flat[::step].clone())
        self.n += flat.numel()

    def values(self) -> torch.Tensor:
        if not self.parts:
            raise BitladderError("observer saw no data: the calibration batches never reached this layer")
        v = torch.cat(self.parts)
        if v.numel() > SAMPLE:
            v = v[:: v.numel() // SAMPLE + 1]
        return v


class Percentile(_Sampled):
    """Range: the ``percentile`` quantile and its mirror of a sample of the values (tails clipped)."""
    name = "percentile"

    def __init__(self, percentile: float = 99.99) -> None:
        super().__init__()
        self.p = percentile / 100

    def range(self) -> tuple[float, float]:
        v = self.values()
        return float(torch.quantile(v, 1 - self.p)), float(torch.quantile(v, self.p))


class MSE(_Sampled):
    """Range: the shrunk min-max range with the least squared quantisation error on a sample."""
    name = "mse"

    def qparams(self, qtype: QType, symmetric: bool):
        v = self.values()
        lo, hi = float(v.min()), float(v.max())
        best, best_err = None, math.inf
        for i in range(40):
            r = 1.0 - 0.9 * i / 39
            s, z = _range_qparams(lo * r, hi * r, qtype, symmetric)
            q, _ = quantize(v, s, z, qtype)
            e = float((dequantize(q, s, z, qtype) - v).pow(2).mean())
            if e < best_err:
                best, best_err = (s, z), e
        return best


class KL(_Sampled):
    """Threshold on |x| minimising KL(P || Q) between the clipped histogram and its quantised form."""

    name = "kl"
    BINS = 2048

    def qparams(self, qtype: QType, symmetric: bool):
        v = self.values()
        a = v.abs()
        amax = float(a.max())
        if amax == 0:
            return _range_qparams(0.0, 0.0, qtype, symmetric)
        hist = torch.histc(a, self.BINS, 0, amax).double()
        levels = qtype.qmax + 1 if symmetric else (qtype.levels // 2)
        best_t, best_kl = self.BINS, math.inf
        for t in range(levels, self.BINS + 1, 16):
            p = hist[:t].clone()
            p[t - 1] += hist[t:].sum()
            chunks = torch.tensor_split(hist[:t], levels)
            q = torch.cat([torch.where(c > 0, c.sum() / (c > 0).sum().clamp(min=1), torch.zeros_like(c))
                           for c in chunks])
            p, q = p / p.sum(), q / max(float(q.sum()), 1e-12)
            mask = p > 0
            kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())
            if kl < best_kl:
                best_t, best_kl = t, kl
        t = (best_t + 0.5) * amax / self.BINS
        lo, hi = max(float(v.min()), -t), min(float(v.max()), t)
        return _range_qparams(lo, hi, qtype, symmetric)


OBSERVERS = {c.name: c for c in (MinMax, MovingAverage, Percentile, MSE, KL)}


def make_observer(name: str) -> Observer:
    """A new observer by name (minmax, ema, percentile, mse, kl); BitladderError if unknown."""
    try:
        return OBSERVERS[name]()
    except KeyError:
        raise BitladderError(f"unknown observer {name!r}; accepted: {', '.join(OBSERVERS)}") from None
