"""AdaRound (Nagel et al., 2020): learn, per weight, whether to round up or down.

Each weight's rounding offset ``h(V)`` in [0, 1] (a rectified sigmoid) is trained with Adam so the
quantised layer reproduces the float layer's output on calibration rows, while a regulariser
``sum(1 - |2h - 1|^beta)`` (beta annealed from 20 to 2) drives every ``h`` to 0 or 1.
"""

from __future__ import annotations

import torch

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QType
from bitladder.methods.quantize.clip import search_qparams

ZETA, GAMMA = 1.1, -0.1


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def adaround_rows(w: torch.Tensor, x: torch.Tensor, qtype: QType, layout: Layout, symmetric: bool,
                  scale_dtype: torch.dtype, iters: int = 500, lr: float = 1e-2, reg: float = 0.01,
                  batch: int = 256, seed: int = 0):
    """AdaRound on weight rows ``w`` (C, K) with input rows ``x`` (N, K): codes, scale, zero point."""
    c, k = w.shape
    rows_layout = Layout(layout.granularity, 0, layout.group)
    scale, zp = search_qparams(rows_layout.to_blocks(w), qtype, symmetric, scale_dtype)
    _, _, nb, b = rows_layout.dims((c, k))
    cols = torch.arange(k) // b
    s = scale.reshape(-1, nb)[:, cols].expand(c, k)
    z = torch.zeros(1) if zp is None else zp.reshape(-1, nb)[:, cols].expand(c, k).float()
    base = torch.floor(w / s)
    rest = (w / s - base).clamp(0.01, 0.99)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    target = x @ w.T
    gen = torch.Generator().manual_seed(seed)
    warm = int(0.2 * iters)
    for t in range(iters):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        h = _h(v)
        q = torch.clamp(base + h + z, qtype.qmin, qtype.qmax)
        out = x[idx] @ ((q - z) * s).T
        loss = (out - target[idx]).pow(2).sum(1).mean()
        if t >= warm:
            beta = 20 - (20 - 2) * (t - warm) / max(iters - warm, 1)
            loss = loss + reg * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        codes = torch.clamp(base + (_h(v) >= 0.5).float() + z, qtype.qmin, qtype.qmax)
    return codes.to(torch.int32), scale, zp
