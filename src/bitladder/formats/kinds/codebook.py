"""Codebook formats (``cbN``): codes index a learned table of 2**N values per row (k-means, see
methods/quantize/codebook.py); the table replaces scale x code."""

from __future__ import annotations

from bitladder.formats.kinds.base import kind
from bitladder.formats.kinds.int import Int


@kind("codebook")
class Codebook(Int):
    """Indices packed like unsigned integers; no ONNX rule (DequantizeLinear has no table lookup)."""

    sparse_ok = False
    has_table = True
    range_scaled = False
    onnx = None
    integer_codes = False  # a table lookup, not scale x code

    def byte_codes(self, qtype) -> bool:
        return False
