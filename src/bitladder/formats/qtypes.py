"""Number formats as data: one table, fp64 down to binary.

Adding a rung is adding a row. Every format knows its storage width (``bits``, the bits one
element occupies once packed), its code range (``qmin``..``qmax`` for integer-like formats) and,
for floats, the torch dtype and largest finite value.

>>> QTYPES["int4"].qmin, QTYPES["int4"].qmax
(-8, 7)
>>> QTYPES["ternary"].bits
1.6
>>> get_qtype("uint3").levels
8
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bitladder.errors import BitladderError
from bitladder.formats.kinds import KINDS, Kind


@dataclass(frozen=True)
class QType:
    """One number format.

    kind: a registered number kind (:mod:`bitladder.formats.kinds`) whose rules scale, round, pack and
    export the format: "float" (a torch float dtype), "int" (integer codes in [qmin, qmax]), "ternary"
    (codes -1, 0, 1 packed five to a byte), "binary" (signs, one bit each) or "codebook" (indices into a
    learned table of 2**bits values, ``cbN``) or "normal" (NormalFloat: fixed normal-quantile levels, ``nf4``).
    """

    name: str
    kind: str
    bits: float  # storage bits per element once packed
    signed: bool = True
    qmin: int = 0
    qmax: int = 0
    dtype: torch.dtype | None = None  # float formats only
    fmax: float | None = None  # float formats: largest finite value

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"format {self.name!r}: unknown number kind {self.kind!r}; known: {', '.join(KINDS)}")

    @property
    def rules(self) -> Kind:
        """The rules of this format's number kind."""
        return KINDS[self.kind]

    @property
    def is_float(self) -> bool:
        """Whether values are stored as a torch float dtype."""
        return self.dtype is not None

    @property
    def levels(self) -> int:
        """Number of distinct codes (integer-like formats)."""
        return self.rules.levels(self)

    @property
    def pack_bits(self) -> int:
        """Width of one code in the bit-stream packer (0: the kind packs otherwise, e.g. ternary base 3)."""
        return self.rules.code_bits(self)


def _float(name: str, dtype: torch.dtype) -> QType:
    return QType(name, "float", torch.finfo(dtype).bits, True, dtype=dtype, fmax=float(torch.finfo(dtype).max))


def _int(bits: int, signed: bool) -> QType:
    if signed:
        return QType(f"int{bits}", "int", bits, True, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return QType(f"uint{bits}", "int", bits, False, 0, 2**bits - 1)


_ROWS = [
    _float("fp64", torch.float64),
    _float("fp32", torch.float32),
    _float("fp16", torch.float16),
    _float("bf16", torch.bfloat16),
    _float("fp8_e4m3", torch.float8_e4m3fn),
    _float("fp8_e5m2", torch.float8_e5m2),
    *[_int(b, s) for b in (8, 7, 6, 5, 4, 3, 2) for s in (True, False)],
    QType("ternary", "ternary", 1.6, True, -1, 1),
    *[QType(f"cb{b}", "codebook", b, False, 0, 2**b - 1) for b in range(1, 9)],
    QType("binary", "binary", 1, True, -1, 1),
    QType("nf4", "normal", 4, False, 0, 15),
]

QTYPES: dict[str, QType] = {q.name: q for q in _ROWS}


def get_qtype(name: str) -> QType:
    """Look a format up by name, with a clear error listing what exists."""
    try:
        return QTYPES[name]
    except KeyError:
        raise BitladderError(f"unknown number format {name!r}; known: {', '.join(QTYPES)}") from None
