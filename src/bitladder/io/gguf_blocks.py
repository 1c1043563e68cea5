"""ggml block types that hold bitladder's integer codes exactly, and their byte encoders.

Every block covers 32 weights of a row with one fp16 scale ``d`` (and, for the ``_1`` types, an fp16
minimum ``m``): Q8_0 ``d*q`` with q in [-128, 127]; Q5_0 ``d*(q-16)`` and Q4_0 ``d*(q-8)`` with unsigned
nibbles; Q5_1 / Q4_1 ``d*q + m``. A bitladder weight maps onto one of them exactly when its scales are fp16
numbers applying to whole 32-weight blocks and its codes (minus an integer zero point) fit the type's range;
:func:`choose` picks the narrowest such type, or says why none fits.

>>> import torch
>>> from bitladder.tensor.quantized import QuantizedTensor
>>> from bitladder.formats.layout import Layout
>>> qt = QuantizedTensor.from_float(torch.randn(4, 64), "int4", Layout("group", group=32))
>>> choose(qt).name
'Q4_0'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as GT

from bitladder.errors import BitladderError
from bitladder.tensor.quantized import QuantizedTensor

BLOCK = 32


def _nibbles(u: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..15 -> (n, 16) bytes: element j in the low nibble of byte j, j+16 in the high."""
    return (u[:, :16] | (u[:, 16:] << 4)).astype(np.uint8)


def _high_bits(u: np.ndarray) -> np.ndarray:
    """(n, 32) values 0..31 -> (n, 4) bytes of a little-endian uint32 whose bit j is bit 4 of element j."""
    bits = ((u >> 4) & 1).astype(np.uint64) << np.arange(BLOCK, dtype=np.uint64)
    return bits.sum(axis=1).astype("<u4").view(np.uint8).reshape(-1, 4)


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype("<f2").view(np.uint8).reshape(-1, 2)


def _q8_0(v, d, m):
    return np.hstack([_f16(d), v.astype(np.int8).view(np.uint8)])


def _q4_0(v, d, m):
    return np.hstack([_f16(d), _nibbles((v + 8).astype(np.uint8))])


def _q5_0(v, d, m):
    u = (v + 16).astype(np.uint8)
    return np.hstack([_f16(d), _high_bits(u), _nibbles(u & 15)])


def _q4_1(v, d, m):
    return np.hstack([_f16(d), _f16(m), _nibbles(v.astype(np.uint8))])


def _q5_1(v, d, m):
    u = v.astype(np.uint8)
    return np.hstack([_f16(d), _f16(m), _high_bits(u), _nibbles(u & 15)])


@dataclass(frozen=True)
class BlockType:
    """A ggml block type: its id, the stored values it holds, whether it has a minimum, its encoder."""
    name: str
    ggml: GT
    lo: int
    hi: int
    with_min: bool
    encode: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


# narrowest first: choose() takes the first that holds a weight exactly
BLOCK_TYPES = (
    BlockType("Q4_0", GT.Q4_0, -8, 7, False, _q4_0),
    BlockType("Q4_1", GT.Q4_1, 0, 15, True, _q4_1),
    BlockType("Q5_0", GT.Q5_0, -16, 15, False, _q5_0),
    BlockType("Q5_1", GT.Q5_1, 0, 31, True, _q5_1),
    BlockType("Q8_0", GT.Q8_0, -128, 127, False, _q8_0),
)
ACCEPTED = ("signed integer formats int2-int8 without zero point (Q4_0 / Q5_0 / Q8_0), unsigned ones with an "
            "integer zero point (Q4_1 / Q5_1 / Q8_0); fp16 scales per channel or per group of a multiple of 32")


@dataclass(frozen=True)
class Blocks:
    """A weight as (rows, K/32) blocks: its stored values v (signed, zero point removed), per-block d and
    integer zero point z (0 when there is none)."""
    values: torch.Tensor  # (C, K) int32
    d: torch.Tensor  # (C, K/32) float32, fp16-exact
    z: torch.Tensor  # (C, K/32) int32


def blocks_of(qt: QuantizedTensor, name: str) -> Blocks:
    """The weight's codes, scales and zero points at 32-weight blocks, or a clear error."""
    fmt = f"layer {name!r} ({qt.qtype.name}, {qt.layout.granularity}"
    fmt += f" {qt.layout.group})" if qt.layout.granularity == "group" else ")"
    if qt.qtype.kind != "int" or qt.table is not None:
        raise BitladderError(f"{fmt}: GGUF holds {ACCEPTED}; this format has no exact ggml block type")
    c, k, nb, b = qt.layout.dims(qt.shape)
    if len(qt.shape) != 2 or qt.layout.axis % 2 != 0 or k % BLOCK or b % BLOCK:
        raise BitladderError(f"{fmt}: ggml blocks are 32 weights of a row; this needs scales per output row "
                             f"(channel) or per group of a multiple of 32 along rows of a multiple of 32")
    if qt.scale is None:
        raise BitladderError(f"{fmt}: no scale to write")
    scale = qt.scale.float()
    if not torch.equal(scale.half().float(), scale):
        raise BitladderError(f"{fmt}: its scales are not fp16 numbers; ggml blocks store fp16 scales "
                             f"(quantise with scale_dtype fp16, the default)")
    zp = torch.zeros(c, nb, dtype=torch.int32)
    if qt.zero_point is not None:
        if qt.zero_point.is_floating_point():
            raise BitladderError(f"{fmt}: float zero points (HQQ) have no exact ggml block type; "
                                 f"GGUF holds {ACCEPTED}")
        zp = qt.qtype.rules.unpack(qt.zero_point, qt.qtype, c * nb).reshape(c, nb).to(torch.int32)
    per = b // BLOCK  # 32-blocks per bitladder scale group
    d = scale.reshape(c, nb).repeat_interleave(per, dim=1)[:, : k // BLOCK]
    z = zp.repeat_interleave(per, dim=1)[:, : k // BLOCK]
    return Blocks(qt.codes().to(torch.int32), d, z)


def _exact_min(bl: Blocks) -> bool:
    m = -bl.d * bl.z.float()
    return bool(torch.equal(m.half().float(), m))


def choose(qt: QuantizedTensor, name: str = "weight") -> BlockType:
    """The narrowest block type holding ``qt`` exactly."""
    bl = blocks_of(qt, name)
    return _choose(bl, qt.zero_point is not None)


def _choose(bl: Blocks, has_zero: bool) -> BlockType:
    lo, hi = int(bl.values.min()), int(bl.values.max())
    zlo, zhi = int(bl.z.min()), int(bl.z.max())
    for bt in BLOCK_TYPES:
        if bt.with_min != has_zero and not (bt.ggml == GT.Q8_0 and has_zero):
            continue
        if bt.with_min:
            if lo >= bt.lo and hi <= bt.hi and _exact_min(bl):
                return bt
        elif lo - zhi >= bt.lo and hi - zlo <= bt.hi:
            return bt
    raise BitladderError(f"codes {lo}..{hi} (zero points {zlo}..{zhi}) fit no ggml block type; GGUF holds {ACCEPTED}")


def encode(qt: QuantizedTensor, name: str, rows: torch.Tensor | None = None) -> tuple[np.ndarray, BlockType]:
    """The (C, K/32 * block bytes) uint8 array of ``qt`` in its block type (rows reordered by ``rows``)."""
    bl = blocks_of(qt, name)
    bt = _choose(bl, qt.zero_point is not None)
    if rows is not None:
        bl = Blocks(bl.values[rows], bl.d[rows], bl.z[rows])
    c, k = bl.values.shape
    v = bl.values.reshape(c, k // BLOCK, BLOCK)
    if not bt.with_min:
        v = v - bl.z.unsqueeze(-1)
    v = v.reshape(-1, BLOCK).numpy()
    d = bl.d.reshape(-1).numpy()
    m = None if not bt.with_min else (-bl.d * bl.z.float()).reshape(-1).numpy()
    return bt.encode(v, d, m).reshape(c, -1), bt
