"""Float formats stored as their torch dtype: fp16 and wider as plain casts, fp8 with a scale that maps the
block's absmax to the format's largest finite value."""

from __future__ import annotations

import torch

from bitladder.formats.kinds.base import Kind, absmax, kind

# relative slack that absorbs the division's own rounding at the block maximum when counting clips
_SLACK = 1 + 2**-20


@kind("float")
class Float(Kind):
    """fp64 down to fp8: codes are the values themselves, packed as their raw bytes."""

    onnx = "float"
    integer_codes = False

    def qparams(self, x, qtype, symmetric):
        return (None if qtype.bits >= 16 else absmax(x, qtype.fmax)), False

    def quantize(self, x, scale, zero_point, qtype):
        v = x.double() if qtype.bits > 32 else x.float()
        v = v if scale is None else v / scale
        clipped = int((v.abs() > qtype.fmax * _SLACK).sum())
        return v.clamp(-qtype.fmax, qtype.fmax).to(qtype.dtype), clipped

    def code_bits(self, qtype) -> int:
        return 0

    def pack(self, codes, qtype):
        return codes.to(qtype.dtype).contiguous().view(torch.uint8).reshape(-1).clone()

    def unpack(self, packed, qtype, n):
        return packed.view(qtype.dtype)[:n]

    def packed_size(self, qtype, n):
        return n * int(qtype.bits) // 8

    def row_bytes(self, qtype, n):
        return n * int(qtype.bits) // 8
