"""Quantisation-aware training: fake-quantised Linear/Conv layers with learned step sizes (LSQ,
Esser et al. 2020) and a straight-through estimator, then conversion to the real packed modules.

``prepare_qat(model, QAT(bits=2))`` wraps every selected layer; train as usual (with
:func:`bitladder.methods.train.distill.distill_loss` for a teacher); ``convert(model)`` stores each
weight at its learned step as a real QuantizedTensor (the layer then runs like any quantised layer).

``act_bits`` adds a learned-step activation quantiser on each layer's input (:class:`.act_quant.LSQAct`),
carried over as the packed layer's static activation quantiser. ``bitnet=True`` (ternary only) trains
BitNet b1.58 layers: absmean ternary weights and per-token absmax int8 activations, kept by the packed
layer (``set_token_act``; simulated compute, packed storage). Every forward value of the fake-quantised
layer is exactly what the converted layer computes (steps are rounded to their fp16 storage in forward).

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
from bitladder.methods.quantize.api import plan
from bitladder.nn.select import Selector
from bitladder.methods.train.act_quant import TINY, LSQAct, absmean_scale, absmean_ternary, grad_scale, token_act
from bitladder.nn.shortcut import RealShortcut, shortcut_mode, shortcut_record
from bitladder.nn.registry import HANDLERS
from bitladder.tensor.quantized import QuantizedTensor


@dataclass(frozen=True)
class QAT:
    """Weights at ``bits`` (2..8), "ternary" or "binary"; per output channel learned steps;
    ``keep_first_last`` leaves the first and last layer at 8 bits (weights and activations; the report
    lists them). ``act_bits`` (2..8): LSQ activations; ``binary_act``: XNOR inputs (binary weights);
    ``bitnet``: BitNet b1.58 (ternary absmean weights, per-token int8 activations); ``shortcut``: Bi-Real
    real-valued shortcuts around the low-bit layers whose shapes allow one (:mod:`.shortcut`)."""

    bits: int | str = 4
    keep_first_last: bool = False
    binary_act: bool = False
    act_bits: int | None = None
    bitnet: bool = False
    shortcut: bool = False
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.bits not in ("ternary", "binary") and not (isinstance(self.bits, int) and 2 <= self.bits <= 8):
            raise BitladderError(f"QAT bits must be 2..8, 'ternary' or 'binary', got {self.bits!r}")
        if self.binary_act and self.bits != "binary":
            raise BitladderError("binary_act needs bits='binary' (XNOR layers)")
        if self.act_bits is not None and not (isinstance(self.act_bits, int) and 2 <= self.act_bits <= 8):
            raise BitladderError(f"QAT act_bits must be None or 2..8, got {self.act_bits!r}")
        if self.bitnet and self.bits != "ternary":
            raise BitladderError("bitnet=True needs bits='ternary' (BitNet b1.58 weights)")
        if self.act_bits is not None and (self.binary_act or self.bitnet):
            raise BitladderError("act_bits does not combine with binary_act or bitnet (they set the activations)")

    def range(self, bits: int | str) -> tuple[int, int, str]:
        """(qmin, qmax, qtype name) of the grid for ``bits``: an int width, "ternary" or "binary"."""
        if bits == "binary":
            return -1, 1, "binary"
        if bits == "ternary":
            return -1, 1, "ternary"
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, f"int{bits}"


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
    """A float Linear/Conv whose weight passes through an LSQ (or XNOR, or absmean ternary) quantiser in
    forward, and whose input through the configured activation quantiser, if any."""

    def __init__(self, layer: nn.Module, qmin: int, qmax: int, qtype: str, binary_act: bool = False,
                 act_bits: int | None = None, bitnet: bool = False) -> None:
        super().__init__()
        self.layer, self.qmin, self.qmax, self.qtype, self.bitnet = layer, qmin, qmax, qtype, bitnet
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        init = 2 * w.abs().mean(1) / max(qmax, 1) ** 0.5  # LSQ's initial step
        self.step = None if bitnet else nn.Parameter(init.clamp(min=TINY))  # (binary: kept, unused)
        self.act = LSQAct(act_bits) if act_bits else None
        self.channel_dim = -1 if isinstance(layer, nn.Linear) else 1
        n_in = layer.weight.shape[1]
        self.act_shift = nn.Parameter(torch.zeros(n_in)) if binary_act else None
        # a buffer, so that a training checkpoint records whether the threshold was initialised
        self.register_buffer("shift_ready", torch.tensor(False) if binary_act else None)

    def quantized_weight(self) -> torch.Tensor:
        """The weight through its quantiser (XNOR, absmean ternary or LSQ), with straight-through gradients."""
        w = self.layer.weight
        shape = [-1] + [1] * (w.dim() - 1)
        if self.qtype == "binary":  # XNOR-Net: sign(w) * mean|w| per output channel
            alpha = w.detach().abs().reshape(w.shape[0], -1).mean(1).reshape(shape)
            return _sign_ste(w) * alpha
        if self.bitnet:
            return absmean_ternary(w)
        g = 1.0 / (w[0].numel() * max(self.qmax, 1)) ** 0.5  # LSQ gradient scale
        sa = self.step.abs().clamp(min=TINY)
        s = (grad_scale(sa, g) + (sa.detach().half().float() - sa.detach())).reshape(shape)  # fp16 as stored
        v = torch.clamp(w / s, self.qmin, self.qmax)
        return (torch.round(v).detach() + (v - v.detach())) * s

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input through the activation quantiser (LSQ, or BitNet per-token int8); unchanged if none."""
        if self.act is not None:
            return self.act(x)
        if self.bitnet:
            return token_act(x, self.channel_dim, 8)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.act_shift is not None:
            if not self.shift_ready:  # start the threshold at each channel's mean input
                with torch.no_grad():
                    dims = [d for d in range(x.dim()) if d != self.channel_dim % x.dim()]
                    self.act_shift.copy_(x.detach().mean(dim=dims))
                    self.shift_ready.fill_(True)
            x = binarize_input(x, self.act_shift, self.channel_dim)
        x = self.quantize_input(x)
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, self.quantized_weight(), layer.bias)
        return layer._conv_forward(x, self.quantized_weight(), layer.bias)


def prepare_qat(model: nn.Module, config: QAT, include: Selector = None, exclude: Selector = None) -> nn.Module:
    """A copy of ``model`` with the selected Linear / Conv layers wrapped for QAT; BitladderError if none."""
    model = copy.deepcopy(model)
    names = [n for n, h in plan(model, include, exclude).targets.items()
             if isinstance(model.get_submodule(n), nn.Linear | nn.Conv1d | nn.Conv2d)]
    if not names:
        raise BitladderError("no Linear or Conv layers selected for QAT")
    for i, name in enumerate(names):
        edge = config.keep_first_last and i in (0, len(names) - 1)
        qmin, qmax, qtype = config.range(8 if edge else config.bits)
        act_bits = 8 if edge and config.act_bits else config.act_bits
        float_layer = model.get_submodule(name)
        layer = FakeQuantLayer(float_layer, qmin, qmax, qtype, config.binary_act and not edge,
                               act_bits, config.bitnet and not edge)
        if config.shortcut and not edge and shortcut_mode(float_layer) is not None:
            layer = RealShortcut(layer, shortcut_record(float_layer))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
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
        if m.qtype == "binary":  # scale = mean|w| per channel, exactly as trained
            qt = QuantizedTensor.from_float(w, "binary", lay, True, "fp32", sparse=False)
        else:
            step = absmean_scale(w) if m.bitnet else m.step.detach().abs().clamp(min=TINY)
            qt = QuantizedTensor.from_float(w, m.qtype, lay, True, "fp16", qparams=(step.reshape(c, 1, 1), None),
                                            sparse=False)
        new = HANDLERS.lookup(m.layer).from_float(m.layer, qt)
        new._qmeta["method"] = "qat-xnor" if m.qtype == "binary" else "qat-bitnet" if m.bitnet else "qat-lsq"
        if m.act_shift is not None:
            new.set_binary_act(m.act_shift.detach())
        if m.act is not None:
            new.set_act(m.act.qtype, m.act.scale(), torch.zeros(1), "lsq")
        if m.bitnet:
            new.set_token_act(8)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model
