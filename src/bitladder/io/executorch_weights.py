"""bitladder's quantised weights as XNNPACK weight formats, value for value.

XNNPACK (ExecuTorch's CPU backend) runs a quantised Linear as int8 activations, quantised per token at each
call, against one of three weight formats: ``qc8w`` (int8 codes, an fp32 scale per output channel), ``qc4w``
(int4 codes, fp32 scale per channel) and ``qb4w`` (int4 codes, a *bf16* scale per group of a multiple of 32
input elements). It has no zero points. A bitladder weight goes to the first format that holds its values
exactly: the signed codes ``code - zero point`` must lie in the format's range for every weight the format
can produce (int2/int3/ternary/binary codes and int2/int3 asymmetric ones fit int4; int4 asymmetric codes
span [-15, 15] and only fit int8 per channel), and ``codes x scales`` must equal bitladder's own
dequantised weight bit for bit (checked). Everything else is refused with the layer, its format and what
is accepted.

In the exported graph a layer is ``dequantize(codes, scales) -> linear`` on a per-token int8 input
(``quantized_decomposed`` ops), the pattern XNNPACK's partitioner lowers into one fully-connected node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bitladder.errors import BitladderError
from bitladder.nn.base import QuantModule
from bitladder.nn.layers import QuantEmbedding, QuantLinear
from bitladder.tensor.quantized import QuantizedTensor, _unpack

log = logging.getLogger("bitladder")


@dataclass(frozen=True)
class XnnFormat:
    """One XNNPACK weight format: code range and whether it takes group scales (always bf16)."""
    name: str
    qmin: int
    qmax: int
    grouped: bool


# first fit wins: 4-bit storage before 8-bit where both hold the codes
FORMATS = (XnnFormat("qc4w", -8, 7, False), XnnFormat("qc8w", -128, 127, False), XnnFormat("qb4w", -8, 7, True))
GROUP_MULTIPLE = 32  # XNNPACK's blockwise kernels take groups of a multiple of 32 input elements


@dataclass
class XnnWeight:
    """Signed int8 codes (N, K), fp32 scales (N,) or (N, K / group), the format and group size (0: per channel)."""
    codes: torch.Tensor
    scale: torch.Tensor
    fmt: XnnFormat
    group: int


def _code_range(qt: QuantizedTensor) -> tuple[int, int]:
    """The smallest and largest signed code (code - zero point) the format can produce, whatever the data."""
    q = qt.qtype
    lo, hi = (float(v) for v in q.rules.decode(torch.tensor([q.qmin, q.qmax]), q))
    if qt.zero_point is not None:
        lo, hi = q.qmin - q.qmax, q.qmax - q.qmin
    return int(lo), int(hi)


def _describe(qt: QuantizedTensor) -> str:
    lay = qt.layout
    where = {"tensor": "per tensor", "channel": "per channel"}.get(lay.granularity, f"groups of {lay.group}")
    return f"{qt.qtype.name} {where}{' asymmetric' if qt.zero_point is not None else ''}"


ACCEPTED = ("accepted: per channel or per tensor, symmetric int2-int8, ternary, binary or asymmetric int2-int7; in "
            f"groups of a multiple of {GROUP_MULTIPLE} dividing the input size, symmetric int2-int4 or asymmetric "
            "int2-int3")


def xnn_weight(name: str, qt: QuantizedTensor, round_scales: bool = False) -> XnnWeight:
    """The XNNPACK weight holding exactly ``qt``'s values, or a BitladderError naming ``name`` and the format.

    ``round_scales``: round group scales to bf16 (XNNPACK's only group scale type) where they are not bf16
    already; the model then differs from bitladder's by that rounding (at most 2**-9 relative per scale)."""
    q, lay = qt.qtype, qt.layout
    rules = q.rules
    if not rules.integer_codes or rules.has_table or q.is_float:
        raise BitladderError(f"layer {name!r}: {q.kind} weights ({q.name}) have no XNNPACK format; {ACCEPTED}")
    if qt.zero_point is not None and qt.zero_point.is_floating_point():
        raise BitladderError(f"layer {name!r}: fractional zero points (HQQ, {_describe(qt)}) have no XNNPACK "
                             f"format; {ACCEPTED}")
    if len(qt.shape) != 2 or (lay.granularity != "tensor" and lay.axis % 2 != 0):
        raise BitladderError(f"layer {name!r}: weights quantised along axis {lay.axis} have no XNNPACK format; "
                             "accepted: scales per output channel (axis 0)")
    c, k, nb, b = lay.dims(qt.shape)
    grouped = lay.granularity == "group" and nb > 1
    lo, hi = _code_range(qt)
    fmt = next((f for f in FORMATS if f.grouped == grouped and f.qmin <= lo and hi <= f.qmax), None)
    if fmt is None:
        raise BitladderError(f"layer {name!r}: {_describe(qt)} weights (signed codes in [{lo}, {hi}]) have no "
                             f"XNNPACK format; {ACCEPTED}")
    if grouped and (b % GROUP_MULTIPLE or k % b):
        raise BitladderError(f"layer {name!r}: {_describe(qt)} weights over {k} inputs: XNNPACK takes groups of a "
                             f"multiple of {GROUP_MULTIPLE} that divide the input size; {ACCEPTED}")
    codes = rules.decode(qt.codes(), q)
    if qt.zero_point is not None:
        zp = _unpack(qt.zero_point, q, c * nb).reshape(c, nb).to(torch.float32)
        codes = codes - zp.repeat_interleave(b, dim=1)[:, :k]
    codes = codes.reshape(qt.shape)  # per tensor: one row of every code, back to (N, K)
    scale = qt.scale.float().reshape(c, nb).expand(qt.shape[0], nb).clone()  # per tensor: the scale per row
    if grouped:
        bf = scale.to(torch.bfloat16).float()
        changed = int((bf != scale).sum())
        if changed and not round_scales:
            raise BitladderError(
                f"layer {name!r}: {changed} of {scale.numel()} group scales ({str(qt.scale.dtype).removeprefix('torch.')}) are not bf16 values "
                "and XNNPACK stores group scales in bf16; accepted: weights quantised with scale_dtype='bf16', "
                "or round_scales=True (the model then differs by that rounding, at most 0.2 % a scale)")
        scale = bf
    dead = scale == 0  # every value of such a block is 0: XNNPACK refuses zero scales, so scale 1 and codes 0
    if bool(dead.any()):
        codes = torch.where(dead.repeat_interleave(b, dim=1)[:, :k] if grouped else dead, 0.0, codes)
        scale = torch.where(dead, 1.0, scale)
    w = XnnWeight(codes.to(torch.int8), scale.contiguous() if grouped else scale[:, 0].contiguous(), fmt,
                  b if grouped else 0)
    want = qt.dequantize(torch.float32)
    if not (grouped and round_scales) and not torch.equal(dequantize(w), want):
        raise BitladderError(f"layer {name!r}: {_describe(qt)} weights do not map exactly onto XNNPACK's "
                             f"{fmt.name}; {ACCEPTED}")
    return w


def dequantize(w: XnnWeight) -> torch.Tensor:
    """The float weight XNNPACK applies: codes x scales (fp32)."""
    s = w.scale.repeat_interleave(w.group, dim=1) if w.group else w.scale[:, None]
    return w.codes.float() * s


class XnnLinear(nn.Module):
    """A Linear in the form XNNPACK lowers: per-token int8 (asymmetric) input, dequantised stored codes.

    Run in eager torch it computes what the ``.pte`` computes (the tests compare the two)."""

    def __init__(self, w: XnnWeight, bias: torch.Tensor | None, in_scale: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("codes", w.codes)
        self.register_buffer("scale", w.scale)
        self.register_buffer("zero", torch.zeros(w.scale.shape, dtype=torch.int64))
        self.register_buffer("in_scale", in_scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        self.fmt, self.group = w.fmt, w.group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        if self.in_scale is not None:  # AWQ / SmoothQuant: the weight was divided by this per input channel
            x = x * self.in_scale
        s, z = qd.choose_qparams_per_token_asymmetric(x, torch.int8)
        x = qd.dequantize_per_token(qd.quantize_per_token(x, s, z, -128, 127, torch.int8), s, z, -128, 127,
                                    torch.int8, x.dtype)
        f = self.fmt
        if self.group:
            w = qd.dequantize_per_channel_group(self.codes, self.scale, self.zero, f.qmin, f.qmax, torch.int8,
                                                self.group, torch.float32)
        else:
            w = qd.dequantize_per_channel(self.codes, self.scale, self.zero, 0, f.qmin, f.qmax, torch.int8)
        return F.linear(x, w, self.bias)


def _linear(name: str, m: QuantLinear, round_scales: bool) -> nn.Module:
    act = m.qmeta.get("act")
    if act is not None and not (act.get("dynamic") == "token" and act["qtype"] == "int8"):
        raise BitladderError(f"layer {name!r}: {act['observer']} {act['qtype']} activations have no XNNPACK rule; "
                             "accepted: none or int8 per token (XNNPACK quantises every such input per token)")
    in_scale = m.in_scale.float().clone() if "in_scale" in m.qmeta else None
    return XnnLinear(xnn_weight(name, m.qweight, round_scales), getattr(m, "bias", None), in_scale)


def _embedding(name: str, m: QuantEmbedding, round_scales: bool) -> nn.Module:
    # XNNPACK lowers no lookup: the table goes in as its dequantised float weight, the same values stored wider
    log.warning("export --to executorch: %s written in float (XNNPACK quantises Linear layers only; the values "
                "are bitladder's dequantised ones)", name)
    return m.to_float()


# per quantised layer type: its XNNPACK form (other layer types are refused by name)
RULES = {QuantLinear: _linear, QuantEmbedding: _embedding}


def xnn_layer(name: str, m: QuantModule, round_scales: bool = False) -> nn.Module:
    """The module that stands for quantised layer ``m`` in the exported graph."""
    rule = next((r for t, r in RULES.items() if isinstance(m, t)), None)
    if rule is None:
        raise BitladderError(f"layer {name!r} ({type(m).__name__}, {_describe(m.qweight)}) has no XNNPACK rule; "
                             "accepted: quantised Linear and Embedding layers (leave the others in float with exclude=[...])")
    return rule(name, m, round_scales)
