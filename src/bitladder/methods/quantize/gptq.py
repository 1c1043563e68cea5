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
        self.done = False

    def update(self, x: torch.Tensor) -> None:
        if self.done:
            raise RuntimeError("HessianCollector: rows added after the Hessian was read")
        x = x.float()
        self.h += (x.T @ x).double().mul_(2)
        self.n += x.shape[0]

    def same_setup(self, other: Collector) -> bool:
        return isinstance(other, HessianCollector) and other.h.shape == self.h.shape

    @property
    def hessian(self) -> torch.Tensor:
        """The mean of x x^T over the collected rows, normalised in place on first read (no k x k copy; the
        collection is over by then)."""
        if not self.done:
            self.h /= max(self.n, 1)
            self.done = True
        return self.h


def _inverse_cholesky(hr: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper triangular ``U`` with ``U^T U = H^-1`` (float64) from ``hr = J H J`` (``H`` with rows and columns
    reversed, a private copy this function consumes), raising the damping tenfold (and warning) if H is
    singular.

    One Cholesky factorisation and one triangular solve in place, never three k x k matrices at once (the
    2816-wide MLP input of a 1B model: 63 MB each; 11008-wide in a 7B: 0.97 GB): ``J H J = L L^T`` gives
    ``H = A A^T`` with the upper triangular ``A = J L J``, so ``H^-1 = A^-T A^-1`` and ``U = A^-1 = J L^-1 J``."""
    mean_diag = float(torch.diag(hr).mean())
    added = 0.0
    for attempt in range(6):
        d = damp * (10**attempt)
        hr.diagonal().add_(d * mean_diag - added)
        added = d * mean_diag
        l, info = torch.linalg.cholesky_ex(hr)
        if int(info) == 0:
            del hr
            eye = torch.eye(l.shape[0], dtype=l.dtype)
            inv = torch.linalg.solve_triangular(l, eye, upper=False, out=eye)  # L^-1, in eye's memory
            del l
            if attempt:
                log.warning("GPTQ: Hessian not positive definite; damping raised to %.3g", d)
            return inv.flip(0, 1), d
        del l
    raise ValueError("GPTQ: the Hessian stays singular even with heavy damping")


def _reversed(h: torch.Tensor, perm: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """``J P^T H P J`` in float64, in one gather (a new matrix), with the dead inputs' diagonal set to 1."""
    rev = perm.flip(0)
    hr = h[rev[:, None], rev].double()
    hr.diagonal()[dead[rev]] = 1.0
    return hr


def gptq_rows(w: torch.Tensor, h: torch.Tensor, qtype: QType, layout: Layout, symmetric: bool,
              scale_dtype: torch.dtype, damp: float = 0.01, act_order: bool = True, block_size: int = 128,
              clip_search: bool = True):
    """GPTQ on the weight rows ``w`` (C, K) with the Hessian ``h`` (K, K; not modified). Returns codes (C, K),
    scale and zero point (C, nb, 1).

    The Hessian is inverted in float64; the column sweep runs in float32, as the paper's reference does (its
    updates are memory-bound: float32 halves their traffic)."""
    w = w.detach().float().clone()
    c, k = w.shape
    diag = torch.diag(h).double()
    dead = diag == 0
    diag[dead] = 1.0
    w[:, dead] = 0.0
    rows_layout = Layout(layout.granularity, 0, layout.group)
    xb = rows_layout.to_blocks(w)
    if clip_search:
        scale, zp = search_qparams(xb, qtype, symmetric, scale_dtype)
    else:
        scale, zp = choose_qparams(xb, qtype, symmetric, scale_dtype)
    del xb
    _, _, nb, b = rows_layout.dims((c, k))
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(k)
    col_block = (torch.arange(k) // b)[perm]  # the scale block of each swept column
    # transposed (K, C): one swept column is one contiguous row, and its update one rank-1 ``addr_``
    st = scale.reshape(-1, nb)[:, col_block].T.contiguous()
    zt = None if zp is None else zp.reshape(-1, nb)[:, col_block].T.float().contiguous()
    wt = w.T[perm].contiguous()
    del w
    hinv = _inverse_cholesky(_reversed(h, perm, dead), damp)[0].float()
    pivots = hinv.diagonal().tolist()
    qt = torch.empty(k, c, dtype=torch.float32)
    err = torch.empty(block_size, c, dtype=torch.float32)
    tmp = torch.empty(c, dtype=torch.float32)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, h1 = wt[i1:i2], hinv[i1:i2, i1:i2]  # views: the sweep updates wt in place
        for i in range(i2 - i1):
            j = i1 + i
            col, code, e = w1[i], qt[j], err[i]
            torch.div(col, st[j], out=code).round_()
            if zt is None:
                code.clamp_(qtype.qmin, qtype.qmax)
                torch.mul(code, st[j], out=tmp)
            else:
                code.add_(zt[j]).clamp_(qtype.qmin, qtype.qmax)
                torch.sub(code, zt[j], out=tmp).mul_(st[j])
            torch.sub(col, tmp, out=e).div_(pivots[j])
            w1[i:].addr_(h1[i, i:], e, alpha=-1)
        if i2 < k:
            wt[i2:].sub_(hinv[i1:i2, i2:].T @ err[: i2 - i1])
    codes = torch.empty(c, k, dtype=torch.int32)
    codes[:, perm] = qt.T.to(torch.int32)
    return codes, scale, zp
