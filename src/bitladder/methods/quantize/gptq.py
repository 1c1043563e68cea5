"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022): quantise a weight column by column, pushing
each column's rounding error onto the columns not yet quantised through the inverse Hessian of the
layer's inputs (``H = 2 X^T X / n``), with lazy block updates.

Groups are the stored contiguous groups; their scales are fixed before the sweep ("static
groups"), so activation ordering never changes the storage layout.
"""

from __future__ import annotations

import logging

import torch

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QType
from bitladder.formats.quant import choose_qparams
from bitladder.methods.quantize.calibrate import Collector
from bitladder.methods.quantize.clip import search_qparams

log = logging.getLogger("bitladder")


class HessianCollector(Collector):
    """Running ``2 X^T X / n`` of a layer's input rows: each batch's product in float32 (a batch's rounding
    is far below GPTQ's damping), summed over batches in float64."""

    by_input = True

    def __init__(self, k: int) -> None:
        self.h = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.float()
        self.h += (x.T @ x).double().mul_(2)
        self.n += x.shape[0]

    def same_setup(self, other: Collector) -> bool:
        return isinstance(other, HessianCollector) and other.h.shape == self.h.shape

    @property
    def hessian(self) -> torch.Tensor:
        """The mean of x x^T over the collected rows."""
        return self.h / max(self.n, 1)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of H^-1, raising the damping tenfold (and warning) if H is singular."""
    mean_diag = float(torch.diag(h).mean())
    for attempt in range(6):
        d = damp * (10**attempt)
        hd = h + d * mean_diag * torch.eye(h.shape[0], dtype=h.dtype)
        l, info = torch.linalg.cholesky_ex(hd)
        if int(info) == 0:
            inv = torch.cholesky_inverse(l)
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                if attempt:
                    log.warning("GPTQ: Hessian not positive definite; damping raised to %.3g", d)
                return u, d
    raise ValueError("GPTQ: the Hessian stays singular even with heavy damping")


def gptq_rows(w: torch.Tensor, h: torch.Tensor, qtype: QType, layout: Layout, symmetric: bool,
              scale_dtype: torch.dtype, damp: float = 0.01, act_order: bool = True, block_size: int = 128,
              clip_search: bool = True):
    """GPTQ on the weight rows ``w`` (C, K). Returns codes (C, K), scale and zero point (C, nb, 1)."""
    w = w.detach().double().clone()
    c, k = w.shape
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    rows_layout = Layout(layout.granularity, 0, layout.group)
    xb = rows_layout.to_blocks(w.float())
    if clip_search:
        scale, zp = search_qparams(xb, qtype, symmetric, scale_dtype)
    else:
        scale, zp = choose_qparams(xb, qtype, symmetric, scale_dtype)
    _, _, nb, b = rows_layout.dims((c, k))
    col_block = torch.arange(k) // b
    s_col = scale.reshape(-1, nb)[:, col_block].double().expand(c, k)
    z_col = None if zp is None else zp.reshape(-1, nb)[:, col_block].double().expand(c, k)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k)
    w, h, s_col = w[:, perm], h[perm][:, perm], s_col[:, perm]
    z_col = None if z_col is None else z_col[:, perm]
    hinv, _ = _inverse_cholesky(h, damp)
    q = torch.zeros(c, k, dtype=torch.float64)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros(c, i2 - i1, dtype=torch.float64), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, s = w1[:, i], s_col[:, i1 + i]
            z = 0.0 if z_col is None else z_col[:, i1 + i]
            code = torch.clamp(torch.round(col / s) + z, qtype.qmin, qtype.qmax)
            q[:, i1 + i] = code
            e = (col - (code - z) * s) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    codes = torch.empty_like(q)
    codes[:, perm] = q
    return codes.to(torch.int32), scale, zp
