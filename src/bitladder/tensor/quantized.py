"""QuantizedTensor: packed codes + scales (+ zero points) + format + layout.

>>> import torch
>>> w = torch.randn(16, 64)
>>> qt = QuantizedTensor.from_float(w, "int4", Layout("group", group=32))
>>> qt.nbytes == 16 * 64 // 2 + 16 * 2 * 2   # 4-bit codes + one fp16 scale per group
True
>>> qt.dequantize().shape
torch.Size([16, 64])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

from bitladder.formats import packing
from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QType, get_qtype
from bitladder.formats.quant import choose_qparams, dequantize, quantize, to_unsigned
from bitladder.tensor.sparse import pack_mask, pays_off, unpack_mask

SCALE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


_SLAB = 1 << 22  # elements rounded at once: a quantiser's float temporaries stay 16 MB for any tensor


def _quantize_slabs(xb: torch.Tensor, scale: torch.Tensor | None, zp: torch.Tensor | None,
                    qtype: QType) -> tuple[torch.Tensor, int]:
    """:func:`~bitladder.formats.quant.quantize` of blocks ``xb`` (C, nb, B) a slab of rows at a time (each
    row's codes depend on its own values and qparams), into one int32 array: a 128k x 4096 embedding would
    otherwise hold two float copies of itself beside its codes."""
    c = xb.shape[0]
    rows = max(1, _SLAB // max(1, xb[0].numel()))
    if c <= rows:
        return quantize(xb, scale, zp, qtype)
    q, clipped = None, 0
    for r0 in range(0, c, rows):
        r1 = min(r0 + rows, c)
        part, n = quantize(xb[r0:r1], _rows(scale, c, r0, r1), _rows(zp, c, r0, r1), qtype)
        if q is None:
            q = torch.empty((c, *part.shape[1:]), dtype=part.dtype)
        q[r0:r1] = part
        clipped += n
    return q, clipped


def _rows(t: torch.Tensor | None, c: int, r0: int, r1: int) -> torch.Tensor | None:
    """Rows ``r0:r1`` of a per-row qparam (one that broadcasts over the rows is passed whole)."""
    return t if t is None or t.dim() == 0 or t.shape[0] != c else t[r0:r1]


def _pack(codes: torch.Tensor, qtype: QType) -> torch.Tensor:
    return qtype.rules.pack(codes, qtype)


def _unpack(packed: torch.Tensor, qtype: QType, n: int) -> torch.Tensor:
    return qtype.rules.unpack(packed, qtype, n)


def packed_size(qtype: QType, n: int) -> int:
    """Bytes that ``n`` codes of ``qtype`` occupy packed."""
    return qtype.rules.packed_size(qtype, n)


@dataclass
class QuantizedTensor:
    """A weight stored for real at its format's width.

    ``packed`` is uint8: the bit-packed codes of the *unpadded* (C, K) row matrix for integer,
    ternary and binary formats, or the raw bytes of the float tensor for float formats. ``scale``
    is (C, nblocks) in its storage dtype; ``zero_point`` is packed at the format's width.
    """

    packed: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    qtype: QType
    shape: tuple[int, ...]
    layout: Layout
    n_clipped: int = field(default=0, compare=False)
    table: torch.Tensor | None = None  # codebook formats: (C, 2**bits) values, per table row
    mask: torch.Tensor | None = None  # sparse storage: packed bitmask of kept weights (tensor/sparse.py)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_float(
        cls,
        w: torch.Tensor,
        qtype: QType | str,
        layout: Layout | None = None,
        symmetric: bool = True,
        scale_dtype: str = "fp16",
        qparams: tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
        sparse: bool | None = None,
    ) -> "QuantizedTensor":
        """Round-to-nearest. ``qparams`` (scale, zero point) in block shape (C, nb, 1) overrides the
        default choice (methods that search scales pass theirs); scales are rounded to storage.
        ``sparse``: store exact zeros as a bitmask (None: only where that is smaller)."""
        qtype = get_qtype(qtype) if isinstance(qtype, str) else qtype
        layout = layout or Layout("channel")
        xb = layout.to_blocks(w.detach())
        if qparams is None:
            scale, zp = choose_qparams(xb, qtype, symmetric, SCALE_DTYPES[scale_dtype])
        else:
            scale, zp = qparams
            scale = None if scale is None else scale.to(SCALE_DTYPES[scale_dtype]).float()
        q, clipped = _quantize_slabs(xb, scale, zp, qtype)
        can = qtype.rules.sparse_ok and not (zp is not None and zp.is_floating_point()) and sparse is not False
        mask = layout.rows(w.detach() != 0) if can else None  # a (C, K) bool: only where it may be used
        if sparse is None:
            sparse = can and pays_off(mask.numel(), int(torch.count_nonzero(mask)), qtype.bits)
        return cls.from_codes(q, scale, zp, qtype, tuple(w.shape), layout, scale_dtype, clipped,
                              mask=mask if sparse and can else None)

    @classmethod
    def from_codes(
        cls, q: torch.Tensor, scale: torch.Tensor | None, zp: torch.Tensor | None, qtype: QType,
        shape: tuple[int, ...], layout: Layout, scale_dtype: str = "fp16", n_clipped: int = 0,
        mask: torch.Tensor | None = None,
    ) -> "QuantizedTensor":
        """Pack codes already chosen (block shape (C, nb, B) or row shape (C, K)) with their qparams;
        with ``mask`` ((C, K) bool), only the kept codes are stored, plus the packed mask."""
        c, k, nb, _ = layout.dims(shape)
        rows = q.reshape(c, -1)[:, :k]
        if mask is not None:
            rows = rows[mask.reshape(c, k)]
        packed = _pack(rows, qtype)
        s = None if scale is None else scale.reshape(c, nb).to(SCALE_DTYPES[scale_dtype])
        if zp is not None and zp.is_floating_point():  # fractional zero points (HQQ) stay fp16
            z = zp.reshape(c, nb).to(torch.float16)
        else:
            z = None if zp is None else _pack(zp.reshape(-1).to(torch.int32), qtype)
        m = None if mask is None else pack_mask(mask.reshape(c, k))
        return cls(packed, s, z, qtype, tuple(shape), layout, n_clipped, mask=m)

    # ---- reading back -------------------------------------------------------------------
    @property
    def numel(self) -> int:
        """Elements of the original tensor."""
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:
        """Stored weights (all of them unless the storage is sparse)."""
        if self.mask is None:
            return self.numel
        c, k, _, _ = self.layout.dims(self.shape)
        return int(unpack_mask(self.mask, c, k).sum())

    def codes(self) -> torch.Tensor:
        """Integer codes (or float values) in the (C, K) row layout (dense, zeros filled in)."""
        c, k, nb, b = self.layout.dims(self.shape)
        mask = None if self.mask is None else unpack_mask(self.mask, c, k)
        n = self.numel if mask is None else int(mask.sum())
        vals = _unpack(self.packed, self.qtype, n)
        if mask is None:
            return vals.reshape(c, k)
        full = torch.zeros(c, k, dtype=vals.dtype)
        if self.zero_point is not None:  # the code that dequantises to exactly 0 is the zero point
            zp = _unpack(self.zero_point, self.qtype, c * nb).reshape(c, nb)
            full = zp[:, torch.arange(k) // b].to(vals.dtype)
        full[mask] = vals
        return full

    def unsigned_codes(self) -> torch.Tensor:
        """The codes as the packer stores them (uint8, (C, K): ``to_unsigned(codes())``), read without the signed
        round trip: 1 byte a weight where that takes 5 at once (kernel builds of an LM head: hundreds of MB)."""
        if self.mask is not None or not self.qtype.rules.integer_codes:
            return to_unsigned(self.codes(), self.qtype)
        c, k, _, _ = self.layout.dims(self.shape)
        return self.qtype.rules.unpack_unsigned(self.packed, self.qtype, self.numel).reshape(c, k)

    def zero_points(self) -> torch.Tensor | None:
        """The zero points as (C, nblocks) values (integer codes or fractional ones), None when symmetric."""
        if self.zero_point is None:
            return None
        c, _, nb, _ = self.layout.dims(self.shape)
        if self.zero_point.is_floating_point():
            return self.zero_point.float().reshape(c, nb)
        return _unpack(self.zero_point, self.qtype, c * nb).reshape(c, nb)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float tensor of the original shape, in ``dtype``."""
        c, k, nb, b = self.layout.dims(self.shape)
        q = self.codes()
        if self.table is not None:
            return self.layout.unrows(torch.gather(self.table.to(dtype), 1, q.long()), self.shape)
        if self.scale is None:
            return self.layout.unrows(q.to(dtype), self.shape)
        pad = nb * b - k
        qb = torch.nn.functional.pad(q, (0, pad)).reshape(c, nb, b) if pad else q.reshape(c, nb, b)
        scale = self.scale.float().reshape(c, nb, 1)
        zp = None
        if self.zero_point is not None and self.zero_point.is_floating_point():
            zp = self.zero_point.float().reshape(c, nb, 1)
        elif self.zero_point is not None:
            zp = _unpack(self.zero_point, self.qtype, c * nb).reshape(c, nb, 1)
        return self.layout.from_blocks(dequantize(qb, scale, zp, self.qtype, dtype), self.shape)

    def _row_bytes(self, n: int) -> int | None:
        """Bytes per row of ``n`` codes if rows start on byte boundaries in the packed stream."""
        return self.qtype.rules.row_bytes(self.qtype, n)

    def dequantize_rows(self, index: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``dequantize()[index]`` for channel axis 0, unpacking only the rows asked for.

        Used by embeddings: a lookup touches a few rows of a large table. Rows that do not start on byte
        boundaries (ternary rows of 384 codes: five codes a byte) are unpacked from the whole packing units
        around them (:meth:`_row_codes`); the full dequantisation is the fallback of packings without units.
        """
        if self.layout.granularity == "tensor":
            return self._tensor_rows(index, dtype)
        c, k, nb, b = self.layout.dims(self.shape)
        rb = self._row_bytes(k)
        unit = self.qtype.rules.pack_unit(self.qtype) if rb is None else None
        zfloat = self.zero_point is not None and self.zero_point.is_floating_point()
        zb = self._row_bytes(nb) if self.zero_point is not None and not zfloat else 0
        if self.layout.axis != 0 or (rb is None and unit is None) or self.mask is not None:
            return self.dequantize(dtype)[index]
        rows = index.reshape(-1)
        if self.byte_rows:
            return self._dequantize_byte_rows(rows, dtype).reshape(*index.shape, *self.shape[1:])
        if zfloat:
            zp = self.zero_point[rows]
        elif zb is None:  # a row's zero points end inside a byte (3-bit codes, 6 groups): the rows' values, as
            # fp16 (small integers, exact), not the whole table (docs/results/ladder-minilm-lowbit-avx2.json)
            zp = self.zero_points()[rows].to(torch.float16)
        else:
            zp = None if self.zero_point is None else self.zero_point.view(c, zb)[rows].reshape(-1)
        packed = self.packed.view(c, rb)[rows].reshape(-1) if rb is not None else self._row_codes(rows, k, unit)
        sub = QuantizedTensor(packed, None if self.scale is None else self.scale[rows], zp,
                              self.qtype, (rows.numel(), *self.shape[1:]), self.layout,
                              table=None if self.table is None else self.table[rows])
        return sub.dequantize(dtype).reshape(*index.shape, *self.shape[1:])

    def _tensor_rows(self, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`dequantize_rows` under one scale (or none: fp16, bf16) for the whole tensor: the rows' bytes, where
        rows start on byte boundaries, dequantised on their own with that scale (the same float operations, so the
        same values); an fp16 embedding dequantised its whole table to look up one sentence (docs/DESIGN.md)."""
        n = math.prod(self.shape[1:])
        rb = self._row_bytes(n)
        if rb is None or self.mask is not None or self.table is not None or (
                self.zero_point is not None and self.zero_point.numel() != 1):
            return self.dequantize(dtype)[index]
        rows = index.reshape(-1)
        sub = QuantizedTensor(self.packed.view(-1, rb)[rows].reshape(-1), self.scale, self.zero_point, self.qtype,
                              (rows.numel(), *self.shape[1:]), self.layout)
        return sub.dequantize(dtype).reshape(*index.shape, *self.shape[1:])

    def _row_codes(self, rows: torch.Tensor, k: int, unit: tuple[int, int]) -> torch.Tensor:
        """Rows ``rows`` of ``k`` codes packed on their own, read from the packing units (``unit``: codes, bytes)
        that hold them: each row's window of whole units is unpacked, its codes cut out, and repacked."""
        cu, bu = unit
        start = rows.long() * k
        first = start // cu  # the unit a row's first code is in
        width = -(-k // cu) + 1  # units that hold any row, wherever in a unit it starts
        at = (first * bu)[:, None] + torch.arange(width * bu)[None]
        win = self.packed[at.clamp_(max=self.packed.numel() - 1)]  # past the end: unused codes of a valid byte
        u = self.qtype.rules.unpack_unsigned(win.reshape(-1), self.qtype, rows.numel() * width * cu)
        u = u.view(rows.numel(), width * cu).gather(1, (start - first * cu)[:, None] + torch.arange(k)[None])
        rules = self.qtype.rules
        return rules.pack(rules.from_unsigned(u, self.qtype), self.qtype)

    @property
    def byte_rows(self) -> bool:
        """One byte per integer code, row-major along axis 0 in whole groups, with integer zero points: rows can
        be dequantised straight from their bytes (:meth:`dequantize_rows`)."""
        c, k, nb, b = self.layout.dims(self.shape)
        return (self.qtype.rules.byte_codes(self.qtype) and self.layout.axis == 0
                and self.layout.granularity != "tensor" and k % b == 0 and self.table is None and self.mask is None
                and not (self.zero_point is not None and self.zero_point.is_floating_point()))

    def _dequantize_byte_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of a one-byte-per-code integer weight: ``(u + qmin - zero point) * scale`` in three passes
        over the rows, faster than the general path's int16 copies (docs/DESIGN.md, 'Compute paths are
        labelled'); the same float operations, so the same values."""
        c, k, nb, b = self.layout.dims(self.shape)
        v = self.packed.view(c, k).index_select(0, rows).view(-1, nb, b).to(torch.float32)
        # the rows' scales and zero points are gathered first, then converted: not the whole table's every lookup
        scale = self.scale.view(c, nb, 1).index_select(0, rows).float()
        if self.zero_point is None:
            return v.add_(float(self.qtype.qmin)).mul_(scale).to(dtype)
        off = float(self.qtype.qmin) - self._zero_point_rows(rows, c, nb).to(torch.float32)
        return v.add_(off).mul_(scale).to(dtype)

    def _zero_point_rows(self, rows: torch.Tensor, c: int, nb: int) -> torch.Tensor:
        """The integer zero points of rows ``rows`` ((R, nb, 1)), unpacking only their bytes where whole rows of
        zero points start on byte boundaries."""
        zb = self._row_bytes(nb)
        if zb is None:
            return _unpack(self.zero_point, self.qtype, c * nb).view(c, nb, 1)[rows]
        packed = self.zero_point.view(c, zb).index_select(0, rows).reshape(-1)
        return _unpack(packed, self.qtype, rows.numel() * nb).view(-1, nb, 1)

    # ---- sizes --------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes actually held: packed codes + scales + zero points."""
        n = self.packed.numel() * self.packed.element_size()
        for t in (self.scale, self.zero_point, self.table, self.mask):
            if t is not None:
                n += t.numel() * t.element_size()
        return n

    @property
    def theoretical_nbytes(self) -> float:
        """bits x elements + scale bits x scales + zero-point bits x zero points, over 8."""
        bits = self.nnz * self.qtype.bits + (self.numel if self.mask is not None else 0)
        if self.table is not None:
            bits += self.table.numel() * torch.finfo(self.table.dtype).bits
        if self.scale is not None:
            bits += self.scale.numel() * torch.finfo(self.scale.dtype).bits
            if self.zero_point is not None:
                zp_bits = 16 if self.zero_point.is_floating_point() else self.qtype.bits
                bits += self.scale.numel() * zp_bits
        return bits / 8

    @property
    def bits_per_weight(self) -> float:
        """Bits held per element, scales and zero points counted."""
        return 8 * self.nbytes / max(self.numel, 1)

    def with_zero_columns(self, cols: torch.Tensor) -> "QuantizedTensor":
        """A dense copy whose (C, K) row-layout columns ``cols`` hold the code that dequantises to exactly 0
        (the zero point, or 0); scales and zero points unchanged. ValueError where the format has no such code."""
        if self.table is not None or not self.qtype.rules.integer_codes or (
                self.zero_point is not None and self.zero_point.is_floating_point()):
            raise ValueError(f"{self.qtype.name} codes have no exact zero to write")
        c, k, _, b = self.layout.dims(self.shape)
        cols = cols.long().flatten()
        rows = self.codes().clone()
        zp = self.zero_points()
        rows[:, cols] = (0 if zp is None else zp[:, cols // b].to(rows.dtype))
        out = QuantizedTensor(_pack(rows, self.qtype), self.scale, self.zero_point, self.qtype, self.shape, self.layout)
        if cols.numel() and bool(self.layout.rows(out.dequantize()).reshape(c, k)[:, cols].any()):
            raise ValueError(f"{self.qtype.name} codes have no exact zero to write")
        return out

    # ---- serialisation ------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by part name (packed, scale, zero_point, table, mask)."""
        out = {"packed": self.packed}
        if self.scale is not None:
            out["scale"] = self.scale
        if self.zero_point is not None:
            out["zero_point"] = self.zero_point
        if self.table is not None:
            out["table"] = self.table
        if self.mask is not None:
            out["mask"] = self.mask
        return out

    def meta(self) -> dict:
        """The JSON metadata that, with :meth:`tensors`, rebuilds this tensor."""
        return {"qtype": self.qtype.name, "shape": list(self.shape), "layout": self.layout.to_dict(),
                "scale_dtype": None if self.scale is None else str(self.scale.dtype).removeprefix("torch.")}

    @classmethod
    def from_parts(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "QuantizedTensor":
        """Rebuild and validate from the dicts of :meth:`tensors` and :meth:`meta`."""
        qt = cls(tensors["packed"], tensors.get("scale"), tensors.get("zero_point"), get_qtype(meta["qtype"]),
                 tuple(meta["shape"]), Layout(**meta["layout"]), table=tensors.get("table"), mask=tensors.get("mask"))
        qt.validate()
        return qt

    def validate(self) -> None:
        """Check that the stored tensors have exactly the sizes the metadata implies."""
        c, k, nb, _ = self.layout.dims(self.shape)
        if self.mask is not None and self.mask.numel() != packing.packed_nbytes(c * k, 1):
            raise ValueError(f"sparsity mask holds {self.mask.numel()} bytes, the shape needs {-(-c * k // 8)}")
        want = packed_size(self.qtype, self.nnz)
        if self.packed.dtype != torch.uint8 or self.packed.numel() != want:
            raise ValueError(f"packed codes hold {self.packed.numel()} bytes, metadata implies {want}")
        if self.qtype.rules.has_table != (self.table is not None):
            raise ValueError(f"{self.qtype.name}: {self.qtype.kind} formats "
                             f"{'need a table' if self.qtype.rules.has_table else 'have no table'}")
        if self.table is not None and tuple(self.table.shape) != (c, self.qtype.levels):
            raise ValueError(f"table shape {tuple(self.table.shape)} != expected {(c, self.qtype.levels)}")
        if self.scale is not None and tuple(self.scale.shape) != (c, nb):
            raise ValueError(f"scale shape {tuple(self.scale.shape)} != expected {(c, nb)}")
        if self.zero_point is not None and self.zero_point.is_floating_point():
            if tuple(self.zero_point.shape) != (c, nb):
                raise ValueError(f"zero-point shape {tuple(self.zero_point.shape)} != expected {(c, nb)}")
        elif self.zero_point is not None and self.zero_point.numel() != packed_size(self.qtype, c * nb):
            raise ValueError("zero-point bytes do not match the metadata")

    def __repr__(self) -> str:
        meta = json.dumps(self.layout.to_dict())
        return f"QuantizedTensor({self.qtype.name}, shape={self.shape}, layout={meta}, nbytes={self.nbytes})"
