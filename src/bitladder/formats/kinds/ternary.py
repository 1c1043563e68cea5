"""Ternary codes -1, 0, +1 with an absmean scale (BitNet b1.58), packed five to a byte as base-3 digits."""

from __future__ import annotations

from bitladder.formats import packing
from bitladder.formats.kinds.base import Kind, kind


@kind("ternary")
class Ternary(Kind):
    """1.6 bits a weight: 3**5 = 243 codes fit one byte."""

    def qparams(self, x, qtype, symmetric):
        return x.abs().mean(dim=-1, keepdim=True), False

    def code_bits(self, qtype) -> int:
        return 0

    def pack(self, codes, qtype):
        return packing.pack_ternary(self.to_unsigned(codes, qtype))

    def unpack(self, packed, qtype, n):
        return self.from_unsigned(self.unpack_unsigned(packed, qtype, n), qtype)

    def unpack_unsigned(self, packed, qtype, n):
        return packing.unpack_ternary(packed, n)

    def packed_size(self, qtype, n):
        return packing.ternary_nbytes(n)

    def row_bytes(self, qtype, n):
        return n // 5 if n % 5 == 0 else None

    def pack_unit(self, qtype):
        return 5, 1
