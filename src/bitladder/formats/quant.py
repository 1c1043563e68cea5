"""Pure quantisation primitives on the block view of :mod:`bitladder.formats.layout`.

``choose_qparams`` picks scales (and zero points), ``quantize`` rounds to nearest with saturation
and *counts* what it had to clip, ``dequantize`` inverts. Codes are signed integers in
``[qtype.qmin, qtype.qmax]`` (binary: -1/+1; ternary: -1/0/+1); floats are torch float tensors.

>>> import torch
>>> from bitladder.formats.qtypes import QTYPES
>>> xb = torch.tensor([[[-1.0, 0.5, 0.25, 1.0]]])
>>> s, z = choose_qparams(xb, QTYPES["int8"])
>>> q, clipped = quantize(xb, s, z, QTYPES["int8"])
>>> q.tolist(), clipped
([[[-127, 64, 32, 127]]], 0)
>>> float((dequantize(q, s, z, QTYPES["int8"]) - xb).abs().max()) <= float(s) / 2
True
"""

from __future__ import annotations

import torch

from bitladder.formats.qtypes import QType

# fp16 scales are clamped to the smallest normal fp16 so that storing them never flushes to zero
_FP16_TINY = float(torch.finfo(torch.float16).tiny)


def choose_qparams(
    xb: torch.Tensor, qtype: QType, symmetric: bool = True, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Scale (C, nb, 1) and integer zero point (or None) for each block of ``xb`` (C, nb, B), by the
    rules of the format's kind (:mod:`bitladder.formats.kinds`). The built-in kinds:

    int, symmetric: ``scale = amax / qmax`` (zero point none). int, asymmetric (use an unsigned
    qtype): the range is widened to include zero, ``scale = (max - min) / (qmax - qmin)``.
    float: plain casts for fp16 and wider (no scale); fp8 gets ``scale = amax / fmax``.
    ternary and binary: ``scale = mean |x|`` (absmean, as BitNet b1.58 and XNOR-Net).
    The returned scale is already rounded to ``scale_dtype`` (and returned as float32), so
    quantising with it is exactly what dequantising from storage will see.
    """
    x = xb.float()
    scale, with_zero = qtype.rules.qparams(x, qtype, symmetric)
    if scale is None:
        return None, None
    scale = _store(scale, scale_dtype)
    return scale, (qtype.rules.zero_point(x, scale, qtype) if with_zero else None)


def _store(scale: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero block: any scale works
    if scale_dtype == torch.float16:
        scale = scale.clamp(_FP16_TINY, float(torch.finfo(torch.float16).max))
    elif scale_dtype.is_floating_point:  # a subnormal scale loses the precision of x / scale and clips
        scale = scale.clamp(min=torch.finfo(scale_dtype).tiny)
    stored = scale.to(scale_dtype)
    # round up, never down: a scale rounded down would clip the largest value of its block
    low = stored.float() < scale
    if bool(low.any()):
        stored = torch.where(low, torch.nextafter(stored, torch.full_like(stored, float("inf"))), stored)
    return stored.float()


def quantize(
    xb: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None, qtype: QType
) -> tuple[torch.Tensor, int]:
    """Round to nearest with saturation. Returns (codes, number of values clipped)."""
    return qtype.rules.quantize(xb, scale, zero_point, qtype)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor | None,
    zero_point: torch.Tensor | None,
    qtype: QType,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of :func:`quantize` (up to the rounding it did)."""
    if scale is None:  # wide floats are stored as themselves
        return q.to(dtype)
    v = qtype.rules.decode(q, qtype)
    if zero_point is not None:
        v = v - zero_point.to(torch.float32)
    return (v * scale).to(dtype)


def to_unsigned(q: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Signed codes -> unsigned codes for the packers (binary: -1/+1 -> 0/1)."""
    return qtype.rules.to_unsigned(q, qtype)


def from_unsigned(u: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Inverse of :func:`to_unsigned`: signed codes (binary: 0/1 -> -1/+1, as int8; others int16)."""
    return qtype.rules.from_unsigned(u, qtype)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio in dB (inf when exact)."""
    ref = ref.double()
    noise = (ref - approx.double()).pow(2).sum()
    if float(noise) == 0.0:
        return float("inf")
    return float(10 * torch.log10(ref.pow(2).sum() / noise))


def fake_quant_per_token(x: torch.Tensor, bits: int = 8, dim: int = -1) -> torch.Tensor:
    """Symmetric absmax quantise-dequantise with one scale per token: every slice along ``dim`` (the
    channel axis) gets ``max|x| / qmax`` (BitNet b1.58's activation quantiser). Scales are computed per
    call, never stored."""
    qmax = 2 ** (bits - 1) - 1
    s = x.abs().amax(dim=dim, keepdim=True).clamp(min=1e-5) / qmax
    return torch.clamp(torch.round(x / s), -qmax - 1, qmax) * s
