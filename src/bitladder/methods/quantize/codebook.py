"""Non-uniform codebook quantisation: k-means (Lloyd) on the weight values, per tensor or per
output channel; each weight stores the index of its centroid at ``bits`` bits, plus an fp16 table
of ``2**bits`` centroids per table row. Dequantisation is a table lookup.

>>> import torch
>>> w = torch.randn(8, 64)
>>> from bitladder.formats.layout import Layout
>>> qt = codebook_tensor(w, 3, Layout("channel"))
>>> qt.table.shape, qt.qtype.name
(torch.Size([8, 8]), 'cb3')
"""

from __future__ import annotations

import torch

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import get_qtype
from bitladder.tensor.quantized import QuantizedTensor


def kmeans_rows(x: torch.Tensor, levels: int, iters: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D k-means for every row of ``x`` (C, K) at once: (indices (C, K), centroids (C, levels))."""
    # start from the uniform min-max grid: Lloyd steps never increase the squared error, so the
    # codebook is never worse than the uniform grid it starts from
    lo, hi = x.float().amin(1, keepdim=True), x.float().amax(1, keepdim=True)
    cent = lo + (hi - lo) * torch.arange(levels, dtype=torch.float32) / max(levels - 1, 1)
    for _ in range(iters):
        idx = (x.unsqueeze(-1) - cent.unsqueeze(1)).abs().argmin(-1)
        sums = torch.zeros_like(cent).scatter_add_(1, idx, x.float())
        counts = torch.zeros_like(cent).scatter_add_(1, idx, torch.ones_like(x, dtype=torch.float32))
        cent = torch.where(counts > 0, sums / counts.clamp(min=1), cent)
    cent = cent.to(torch.float16).float()  # assign against the stored table
    idx = (x.unsqueeze(-1) - cent.unsqueeze(1)).abs().argmin(-1)
    return idx, cent


def codebook_tensor(w: torch.Tensor, bits: int, layout: Layout, iters: int = 25) -> QuantizedTensor:
    """``w`` as a ``cb{bits}`` codebook tensor: k-means per layout row, fp16 table (one huge row: fit on a sample)."""
    qtype = get_qtype(f"cb{bits}")
    rows = layout.rows(w.detach().float())
    if rows.shape[0] == 1 and rows.shape[1] > 65536:  # one table for a big tensor: fit on a sample
        sample = rows[:, :: rows.shape[1] // 65536 + 1]
        _, cent = kmeans_rows(sample, qtype.levels, iters)
        idx = (rows.unsqueeze(-1) - cent.unsqueeze(1)).abs().argmin(-1)
    else:
        idx, cent = kmeans_rows(rows, qtype.levels, iters)
    qt = QuantizedTensor.from_codes(idx.to(torch.int32), None, None, qtype, tuple(w.shape), layout)
    qt.table = cent.to(torch.float16)
    return qt
