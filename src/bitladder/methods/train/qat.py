"""Quantisation-aware training: fake-quantised Linear/Conv layers with learned step sizes (LSQ,
Esser et al. 2020) and a straight-through estimator, then conversion to the real packed modules.

``prepare_qat(model, QAT(bits=2))`` wraps every selected layer; train as usual (with
:func:`bitladder.methods.train.distill.distill_loss` for a teacher); ``convert(model)`` stores each
weight at its learned step as a real QuantizedTensor (the layer then runs like any quantised layer).

>>> import torch
>>> m = prepare_qat(torch.nn.Sequential(torch.nn.Linear(8, 4)), QAT(bits=3))
>>> type(m[0]).__name__, type(convert(m)[0]).__name__
('FakeQuantLayer', 'QuantLinear')
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.formats.layout import Layout
from bitladder.methods.quantize.api import Selector, plan
from bitladder.nn.registry import HANDLERS
from bitladder.tensor.quantized import QuantizedTensor


@dataclass(frozen=True)
class QAT:
    """Weights at ``bits`` (2..8) or "ternary"; per output channel learned steps; ``keep_first_last``
    leaves the first and last layer at 8 bits (the usual policy; the report lists them)."""

    bits: int | str = 4
    keep_first_last: bool = False
    binary_act: bool = False
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.bits not in ("ternary", "binary") and not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise BitladderError(f"QAT bits must be 2..8, 'ternary' or 'binary', got {self.bits!r}")
        if self.binary_act and self.bits != "binary":
            raise BitladderError("binary_act needs bits='binary' (XNOR layers)")

    def range(self, bits: int | str) -> tuple[int, int, str]:
        if bits == "binary":
            return -1, 1, "binary"
        if bits == "ternary":
            return -1, 1, "ternary"
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, f"int{bits}"


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


def _sign_ste(x: torch.Tensor, window: torch.Tensor | float = 1.0) -> torch.Tensor:
    """sign (x >= 0 -> +1) forward; identity gradient inside |x| <= window, zero outside (clipped STE)."""
    clipped = torch.clamp(x / window, -1, 1)
    return (torch.where(x >= 0, 1.0, -1.0) - clipped).detach() + clipped


def binarize_input(x: torch.Tensor, shift: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """sign(x - shift) * mean|x - shift| per sample (XNOR-Net's scale, ReActNet's learnable threshold)."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    d = x - shift.reshape(shape)
    beta = d.abs().mean(dim=tuple(range(1, x.dim())), keepdim=True)
    return _sign_ste(d, 3 * beta.detach().clamp(min=1e-6)) * beta


class FakeQuantLayer(nn.Module):
    """A float Linear/Conv whose weight passes through an LSQ quantiser in forward."""

    def __init__(self, layer: nn.Module, qmin: int, qmax: int, qtype: str, binary_act: bool = False) -> None:
        super().__init__()
        self.layer, self.qmin, self.qmax, self.qtype = layer, qmin, qmax, qtype
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        init = 2 * w.abs().mean(1) / max(qmax, 1) ** 0.5  # LSQ's initial step
        self.step = nn.Parameter(init.clamp(min=1e-8))
        self.channel_dim = -1 if isinstance(layer, nn.Linear) else 1
        n_in = layer.weight.shape[1]
        self.act_shift = nn.Parameter(torch.zeros(n_in)) if binary_act else None
        # a buffer, so that a training checkpoint records whether the threshold was initialised
        self.register_buffer("shift_ready", torch.tensor(False) if binary_act else None)

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        shape = [-1] + [1] * (w.dim() - 1)
        if self.qtype == "binary":  # XNOR-Net: sign(w) * mean|w| per output channel
            alpha = w.detach().abs().reshape(w.shape[0], -1).mean(1).reshape(shape)
            return _sign_ste(w) * alpha
        g = 1.0 / (w[0].numel() * max(self.qmax, 1)) ** 0.5  # LSQ gradient scale
        s = self.step * g + (self.step - self.step * g).detach()
        q = _round_ste(torch.clamp(w / s.reshape(shape), self.qmin, self.qmax))
        return q * s.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.act_shift is not None:
            if not self.shift_ready:  # start the threshold at each channel's mean input
                with torch.no_grad():
                    dims = [d for d in range(x.dim()) if d != self.channel_dim % x.dim()]
                    self.act_shift.copy_(x.detach().mean(dim=dims))
                    self.shift_ready.fill_(True)
            x = binarize_input(x, self.act_shift, self.channel_dim)
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, self.quantized_weight(), layer.bias)
        return layer._conv_forward(x, self.quantized_weight(), layer.bias)


def prepare_qat(model: nn.Module, config: QAT, include: Selector = None, exclude: Selector = None) -> nn.Module:
    model = copy.deepcopy(model)
    names = [n for n, h in plan(model, include, exclude).targets.items()
             if isinstance(model.get_submodule(n), nn.Linear | nn.Conv1d | nn.Conv2d)]
    if not names:
        raise BitladderError("no Linear or Conv layers selected for QAT")
    for i, name in enumerate(names):
        edge = config.keep_first_last and i in (0, len(names) - 1)
        qmin, qmax, qtype = config.range(8 if edge else config.bits)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child,
                FakeQuantLayer(model.get_submodule(name), qmin, qmax, qtype, config.binary_act and not edge))
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace every FakeQuantLayer by the real quantised module, at its learned steps."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if not isinstance(m, FakeQuantLayer):
            continue
        w = m.layer.weight.detach()
        lay = Layout("channel", 0)
        c = w.shape[0]
        step = m.step.detach().abs().clamp(min=1e-8).reshape(c, 1, 1)
        if m.qtype == "binary":  # scale = mean|w| per channel, exactly as trained
            qt = QuantizedTensor.from_float(w, "binary", lay, True, "fp32", sparse=False)
        else:
            qt = QuantizedTensor.from_float(w, m.qtype, lay, True, "fp16", qparams=(step, None), sparse=False)
        new = HANDLERS.lookup(m.layer).from_float(m.layer, qt)
        new._qmeta["method"] = "qat-xnor" if m.qtype == "binary" else "qat-lsq"
        if m.act_shift is not None:
            new.set_binary_act(m.act_shift.detach())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
