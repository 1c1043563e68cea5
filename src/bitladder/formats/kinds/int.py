"""Integer codes in ``[qmin, qmax]``: symmetric (scale = absmax / qmax) or asymmetric (range widened to
include zero, with an integer zero point)."""

from __future__ import annotations

from bitladder.formats.kinds.base import Kind, absmax, kind


@kind("int")
class Int(Kind):
    """Signed (intN) and unsigned (uintN) integer grids, 2 to 8 bits."""

    range_scaled = True

    def qparams(self, x, qtype, symmetric):
        if symmetric:
            return absmax(x, qtype.qmax), False
        mn = x.amin(dim=-1, keepdim=True).clamp(max=0)
        mx = x.amax(dim=-1, keepdim=True).clamp(min=0)
        return (mx - mn) / (qtype.qmax - qtype.qmin), True

    def byte_codes(self, qtype) -> bool:
        return self.code_bits(qtype) == 8
