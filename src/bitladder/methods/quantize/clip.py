"""Weight clipping search: the scale per block that minimises the block's squared error.

Round-to-nearest with ``scale = amax / qmax`` wastes levels on rare large weights; shrinking the
range (and clipping those weights) lowers the mean error at 2-4 bits. The search tries ``grid``
shrink factors from 1 down to ``min_ratio`` and keeps the best per block (the MSE observer for weights).

>>> import torch
>>> from bitladder.formats.qtypes import QTYPES
>>> from bitladder.formats.quant import choose_qparams, dequantize, quantize
>>> xb = torch.randn(8, 4, 64)
>>> s0, z0 = choose_qparams(xb, QTYPES["int3"])
>>> s1, z1 = search_qparams(xb, QTYPES["int3"], symmetric=True)
>>> err = lambda s, z: float((dequantize(quantize(xb, s, z, QTYPES["int3"])[0], s, z, QTYPES["int3"]) - xb).pow(2).sum())
>>> err(s1, z1) <= err(s0, z0)
True
"""

from __future__ import annotations

import torch

from bitladder.formats.qtypes import QType
from bitladder.formats.quant import choose_qparams

_SLAB = 1 << 18  # elements searched at once (1 MB of float32 per temporary)


def search_qparams(xb: torch.Tensor, qtype: QType, symmetric: bool, scale_dtype: torch.dtype = torch.float16,
                   grid: int = 20, min_ratio: float = 0.5, weight: torch.Tensor | None = None):
    """Best (scale, zero point) per block of ``xb`` (C, nb, B) over shrink factors of the range.

    ``weight`` (broadcastable to ``xb``) weights each element's squared error, e.g. by the mean
    square of the activation it multiplies (activation-aware clipping).
    Rows are searched a slab at a time (each block's search is its own): the grid's temporaries stay a few
    MB whatever the layer's size, instead of several copies of the whole weight per shrink factor.
    """
    rows = max(1, _SLAB // max(1, xb[0].numel()))
    if xb.shape[0] > rows:
        per_row = weight is not None and weight.dim() == xb.dim() and weight.shape[0] == xb.shape[0] > 1
        parts = [search_qparams(xb[i : i + rows], qtype, symmetric, scale_dtype, grid, min_ratio,
                                weight[i : i + rows] if per_row else weight) for i in range(0, xb.shape[0], rows)]
        zs = [z for _, z in parts]
        return torch.cat([s for s, _ in parts]), None if zs[0] is None else torch.cat(zs)
    x = xb.float()
    best_s, best_z = choose_qparams(x, qtype, symmetric, scale_dtype)
    if not qtype.rules.range_scaled:
        return best_s, best_z
    ends = torch.cat([x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)], dim=-1)  # a range-scaled
    # kind's scale and zero point depend on the block's ends alone: shrink those, not the whole block
    best_err = torch.full(x.shape[:-1] + (1,), float("inf"))
    for i in range(grid):
        ratio = 1.0 - (1.0 - min_ratio) * i / max(grid - 1, 1)
        s, z = choose_qparams(ends * ratio, qtype, symmetric, scale_dtype)  # range shrunk by `ratio`
        e = qtype.rules.round_trip(x, s, z, qtype).sub_(x).pow_(2)
        if weight is not None:
            e = e * weight
        e = e.sum(dim=-1, keepdim=True)
        better = e < best_err
        best_err = torch.where(better, e, best_err)
        best_s = torch.where(better, s, best_s)
        if best_z is not None:
            best_z = torch.where(better, z, best_z)
    return best_s, best_z
