"""Number kinds as a registry: each kind (float, int, ternary, binary, codebook, ...) states once how its
values are scaled, rounded, packed and exported; formats (rows of :mod:`bitladder.formats.qtypes`) name
their kind, and nothing else in the package switches on it.

A new kind is one file here with a :class:`Kind` subclass under ``@kind("name")``, its module name in
``BUILTIN`` (``kinds/__init__.py``), its rows in the format table, and its test.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
import torch

from bitladder.formats import packing

QType = object  # a bitladder.formats.qtypes.QType; not imported: formats name their kind, not the reverse

KINDS: dict[str, "Kind"] = {}


def kind(name: str):
    """Register one instance of the decorated :class:`Kind` subclass under ``name``."""

    def register(cls: type["Kind"]) -> type["Kind"]:
        if name in KINDS:
            raise ValueError(f"number kind {name!r} is registered twice")
        inst = cls()
        inst.name = name
        KINDS[name] = inst
        return cls

    return register


PACK_SLAB = 1 << 22  # codes packed at once (a multiple of 8)

class Kind(ABC):
    """The rules one kind of number follows. Codes are signed integers in ``[qmin, qmax]`` unless the kind
    says otherwise; packers take unsigned codes (:meth:`to_unsigned`)."""

    name = ""
    sparse_ok = True  # exact zeros can be stored as a bitmask instead of codes
    has_table = False  # values come from a per-row table (codebooks), not from scale x code
    onnx = "dequantize-linear"  # the export rule io/onnx_export.py applies, or None where there is none
    range_scaled = False  # the scale spans the block's range: shrinking it trades clipping for resolution
    integer_codes = True  # values are scale x (code - zero point): integer kernels may run the format

    @abstractmethod
    def qparams(self, x: torch.Tensor, qtype: QType, symmetric: bool) -> tuple[torch.Tensor | None, bool]:
        """Raw scale (C, nb, 1) for blocks ``x`` (C, nb, B) (None: no scale) and whether a zero point goes
        with it (the caller rounds the scale to storage first, then asks :meth:`zero_point`)."""

    def zero_point(self, x: torch.Tensor, scale: torch.Tensor, qtype: QType) -> torch.Tensor:
        """Integer zero point putting the block's minimum (or 0) at ``qmin``."""
        mn = x.amin(dim=-1, keepdim=True).clamp(max=0)
        return torch.round(qtype.qmin - mn / scale).clamp(qtype.qmin, qtype.qmax).to(torch.int32)

    def quantize(self, x: torch.Tensor, scale: torch.Tensor | None, zero_point: torch.Tensor | None,
                 qtype: QType) -> tuple[torch.Tensor, int]:
        """Round to nearest with saturation: (codes, number of values clipped)."""
        v = (x.float() / scale).round_()
        if zero_point is not None:
            v.add_(zero_point)
        # in place and counted without a bool sum (which widens every element to int64)
        clipped = int(torch.count_nonzero(v.lt(qtype.qmin).logical_or_(v.gt(qtype.qmax))))
        return v.clamp_(qtype.qmin, qtype.qmax).to(torch.int32), clipped

    def decode(self, q: torch.Tensor, qtype: QType) -> torch.Tensor:
        """Codes -> the float32 values a scale multiplies (before the zero point is taken off)."""
        return q.to(torch.float32)

    def round_trip(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                   qtype: QType) -> torch.Tensor:
        """``dequantize(quantize(x))`` as float32, in one pass over ``x`` where the kind keeps the base rules
        (searches call it once per candidate scale)."""
        if type(self).quantize is not Kind.quantize or type(self).decode is not Kind.decode:
            q, _ = self.quantize(x, scale, zero_point, qtype)
            v = self.decode(q, qtype)
            return (v if zero_point is None else v - zero_point.float()).mul_(scale)
        v = torch.round(x.float() / scale)
        if zero_point is None:
            return v.clamp_(qtype.qmin, qtype.qmax).mul_(scale)
        z = zero_point.float()
        return v.add_(z).clamp_(qtype.qmin, qtype.qmax).sub_(z).mul_(scale)

    def to_unsigned(self, q: torch.Tensor, qtype: QType) -> torch.Tensor:
        """Signed codes -> the unsigned codes the packer stores."""
        return (q.to(torch.int16) - qtype.qmin).to(torch.uint8)

    def from_unsigned(self, u: torch.Tensor, qtype: QType) -> torch.Tensor:
        """Inverse of :meth:`to_unsigned`."""
        return u.to(torch.int16) + qtype.qmin

    def affine(self, qtype: QType) -> tuple[int, int]:
        """(mult, off) with ``from_unsigned(u) == mult * u - off``: kernels work on unsigned codes."""
        return 1, -qtype.qmin

    def width(self, qtype: QType) -> int:
        """Bits an unsigned code needs (what a kernel's bit planes hold)."""
        return max(1, (self.levels(qtype) - 1).bit_length())

    def levels(self, qtype: QType) -> int:
        """Number of distinct codes."""
        return qtype.qmax - qtype.qmin + 1

    def code_bits(self, qtype: QType) -> int:
        """Width of one code in the bit-stream packer (0: the kind packs otherwise)."""
        return int(qtype.bits)

    def pack(self, codes: torch.Tensor, qtype: QType) -> torch.Tensor:
        """Codes (any shape, row-major) -> uint8 bytes; a slab of codes at a time (8 codes are whole bytes at
        any width, so the slabs' bytes concatenate to the whole stream's), so the packer's wider temporaries
        stay small for any tensor."""
        flat, bits = codes.reshape(-1), self.code_bits(qtype)
        if flat.numel() <= PACK_SLAB:
            return packing.pack_bits(self.to_unsigned(flat, qtype), bits)
        return torch.cat([packing.pack_bits(self.to_unsigned(flat[i : i + PACK_SLAB], qtype), bits)
                          for i in range(0, flat.numel(), PACK_SLAB)])

    def unpack(self, packed: torch.Tensor, qtype: QType, n: int) -> torch.Tensor:
        """The first ``n`` codes of ``packed``, flat."""
        return self.from_unsigned(self.unpack_unsigned(packed, qtype, n), qtype)

    def unpack_unsigned(self, packed: torch.Tensor, qtype: QType, n: int) -> torch.Tensor:
        """The first ``n`` codes as the packer stores them (:meth:`to_unsigned`'s uint8), flat."""
        return packing.unpack_bits(packed, self.code_bits(qtype), n)

    def packed_size(self, qtype: QType, n: int) -> int:
        """Bytes that ``n`` codes occupy packed."""
        return packing.packed_nbytes(n, self.code_bits(qtype))

    def row_bytes(self, qtype: QType, n: int) -> int | None:
        """Bytes per row of ``n`` codes where rows start on byte boundaries (else None)."""
        bits = n * self.code_bits(qtype)
        return bits // 8 if bits % 8 == 0 else None

    def pack_unit(self, qtype: QType) -> tuple[int, int] | None:
        """(codes, bytes) of the smallest run of codes that fills whole bytes, packed on its own as in the stream
        (a row can then be unpacked from the units around it), or None where the kind packs otherwise."""
        bits = self.code_bits(qtype)
        if bits <= 0:
            return None
        g = math.gcd(bits, 8)
        return 8 // g, bits // g

    def byte_codes(self, qtype: QType) -> bool:
        """One integer code per byte, offset by ``qmin`` (rows dequantise straight from their bytes)."""
        return False


def absmax(x: torch.Tensor, top: float) -> torch.Tensor:
    """``max |x| / top`` per block."""
    return x.abs().amax(dim=-1, keepdim=True) / top
