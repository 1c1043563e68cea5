"""Sparse storage for quantised weights: a bitmask (1 bit per weight, packed like a 1-bit format)
plus the codes of the kept weights only, in row-major order.

It is used only where it is smaller than dense storage, i.e. when ``numel + nnz * bits < numel * bits``
(more than 1/bits of the weights are exactly zero): pruned fp32 weights at 80 % sparsity take
1 + 0.2 * 32 = 7.4 bits per weight instead of 32. N:M patterns (2:4) cost the same 1 bit per weight.

>>> import torch
>>> m = torch.tensor([[True, False, False, True]])
>>> unpack_mask(pack_mask(m), 1, 4).tolist()
[[True, False, False, True]]
>>> pays_off(100, 20, 32), pays_off(100, 90, 4)
(True, False)
"""

from __future__ import annotations

import torch

from bitladder.formats.packing import pack_bits, unpack_bits


def pays_off(numel: int, nnz: int, bits: float) -> bool:
    """Whether a 1-bit mask plus ``nnz`` values of ``bits`` each take fewer bits than ``numel`` dense values."""
    return numel + nnz * bits < numel * bits


def pack_mask(mask_rows: torch.Tensor) -> torch.Tensor:
    """The mask packed one bit per element."""
    return pack_bits(mask_rows.reshape(-1).to(torch.uint8), 1)


def unpack_mask(packed: torch.Tensor, c: int, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: the (c, k) boolean mask."""
    return unpack_bits(packed, 1, c * k).reshape(c, k).bool()
