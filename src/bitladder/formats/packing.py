"""Bit packing: one pack/unpack pair per width, exact round trips.

Layout (documented in docs/FORMATS.md):

* ``pack_bits(codes, b)`` for b in 1..8 takes unsigned codes in [0, 2**b) and writes a
  little-endian bit stream: element ``i`` occupies stream bits ``[b*i, b*i + b)``, stream bit
  ``k`` is bit ``k % 8`` of byte ``k // 8``. For b = 4 that is "low nibble first"; for b = 8 it is
  one byte per element. The output has exactly ``ceil(n*b/8)`` bytes.
* ``pack_ternary(codes)`` takes codes in {0, 1, 2} and stores five per byte as base-3 digits,
  least significant first (3**5 = 243 <= 256): ``ceil(n/5)`` bytes, 1.6 bits per element.

>>> import torch
>>> c = torch.tensor([1, 2, 3, 0, 5, 7, 6], dtype=torch.uint8)
>>> p = pack_bits(c, 3)
>>> p.numel()
3
>>> unpack_bits(p, 3, 7).tolist()
[1, 2, 3, 0, 5, 7, 6]
"""

from __future__ import annotations

import math

import torch


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of width ``bits`` occupy once packed."""
    return math.ceil(n * bits / 8)


def ternary_nbytes(n: int) -> int:
    """Bytes that ``n`` ternary codes occupy packed five per byte."""
    return math.ceil(n / 5)


def _check(codes: torch.Tensor, hi: int) -> torch.Tensor:
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= hi):
        raise ValueError(f"codes must lie in [0, {hi}); got [{int(flat.min())}, {int(flat.max())}]")
    return flat


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (any integer dtype, any shape; flattened) into a uint8 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = _check(codes, 2**bits)
    n = flat.numel()
    if bits == 8:
        return flat.to(torch.uint8).clone()
    if 8 % bits == 0:  # 1, 2, 4: whole codes per byte, uint8 arithmetic
        per = 8 // bits
        pad = (-n) % per
        c = torch.nn.functional.pad(flat.to(torch.uint8), (0, pad)).view(-1, per)
        out = torch.zeros(c.shape[0], dtype=torch.uint8)
        for i in range(per):
            out |= c[:, i] << (bits * i)
        return out
    # general width: 8 codes make exactly `bits` bytes through one 64-bit word
    pad = (-n) % 8
    c = torch.nn.functional.pad(flat.to(torch.int64), (0, pad)).view(-1, 8)
    word = (c << (torch.arange(8, dtype=torch.int64) * bits)).sum(dim=1)
    out = (word[:, None] >> (torch.arange(bits, dtype=torch.int64) * 8)) & 0xFF
    return out.to(torch.uint8).reshape(-1)[: packed_nbytes(n, bits)].contiguous()


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes, as uint8 (int64 never needed after)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    if packed.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {n} codes of {bits} bits")
    p = packed.reshape(-1).to(torch.uint8)
    if bits == 8:
        return p.clone()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.uint8) * bits
        return ((p[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:n]
    pad = (-p.numel()) % bits
    b = torch.nn.functional.pad(p.to(torch.int64), (0, pad)).view(-1, bits)
    word = (b << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1)
    codes = (word[:, None] >> (torch.arange(8, dtype=torch.int64) * bits)) & (2**bits - 1)
    return codes.reshape(-1)[:n].to(torch.uint8)


_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)
# byte -> its five base-3 digits: unpacking is one table lookup per byte
_TERNARY_LUT = ((torch.arange(243, dtype=torch.int16)[:, None] // _POW3) % 3).to(torch.uint8)


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack codes in {0, 1, 2} five to a byte (base 3, least significant digit first)."""
    flat = _check(codes, 3)
    pad = (-flat.numel()) % 5
    c = torch.nn.functional.pad(flat.to(torch.int16), (0, pad)).view(-1, 5)
    return (c * _POW3).sum(dim=1).to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: the first ``n`` codes, as uint8."""
    if packed.numel() != ternary_nbytes(n):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {n} ternary codes")
    p = packed.reshape(-1).to(torch.int64)
    if p.numel() and int(p.max()) > 242:
        raise ValueError("byte values above 242 are not valid ternary packing")
    return _TERNARY_LUT[p].reshape(-1)[:n]
