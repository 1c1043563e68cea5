"""GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022): quantise a weight column by column, pushing
each column's rounding error onto the columns not yet quantised through the inverse Hessian of the
layer's inputs (``H = 2 X^T X / n``), with lazy block updates.

Groups are the stored contiguous groups; their scales are fixed before the sweep ("static
groups"), so activation ordering never changes the storage layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

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
        self.h: torch.Tensor | None = torch.zeros(k, k, dtype=torch.float64)
        self.n = 0
        self.done = False
        self._inverse: tuple[tuple, Inverse] | None = None

    def update(self, x: torch.Tensor) -> None:
        if self.done:
            raise RuntimeError("HessianCollector: rows added after the Hessian was read")
        x = x.float()
        self.h.add_(x.T @ x, alpha=2)  # promoted element by element: no k x k float64 temporary
        self.n += x.shape[0]

    def same_setup(self, other: Collector) -> bool:
        return isinstance(other, HessianCollector) and other.h is not None and other.h.shape == self.h.shape

    @property
    def hessian(self) -> torch.Tensor:
        """The mean of x x^T over the collected rows, normalised in place on first read (no k x k copy; the
        collection is over by then)."""
        if self.h is None:
            raise RuntimeError("HessianCollector: the Hessian was released after its inverse was taken")
        if not self.done:
            self.h /= max(self.n, 1)
            self.done = True
        return self.h

    def inverse(self, damp: float, act_order: bool) -> "Inverse":
        """:func:`inverse` of the Hessian, computed once for every layer sharing this collector; the Hessian
        itself is handed over and freed as soon as it is factorised (the k x k float64 matrices are the peak)."""
        key = (damp, act_order)
        if self._inverse is None:
            self.hessian  # normalised before it is handed over
            self._inverse = (key, inverse(self._take(), damp, act_order, consume=True))
        elif self._inverse[0] != key:
            raise RuntimeError(f"HessianCollector: inverse taken with {self._inverse[0]}, asked again with {key}")
        return self._inverse[1]

    def _take(self) -> torch.Tensor:
        h, self.h = self.h, None
        return h


@dataclass(frozen=True)
class Inverse:
    """What the column sweep needs of a Hessian: the sweep order, the dead (never-active) inputs, the
    upper triangular ``U`` (``U^T U = (P^T H P)^-1``, float32) and the damping that made H invertible."""

    perm: torch.Tensor
    dead: torch.Tensor
    u: torch.Tensor
    damp: float


_SOLVE_COLUMNS = 256  # right-hand sides per triangular solve: a (K, 256) float64 slab, not a K x K identity
_SWEEP_ELEMENTS = 1 << 22  # weight elements swept at once: the sweep's copies stay 16 MB each for any layer


def inverse(h: torch.Tensor, damp: float = 0.01, act_order: bool = True, consume: bool = False) -> Inverse:
    """The :class:`Inverse` of the Hessian ``h`` (K, K), raising the damping tenfold (and warning) while the
    damped Hessian is not positive definite. ``consume``: the caller holds no other reference to ``h``, which
    is then freed once factorised.

    With ``hr = J P^T H P J`` (rows and columns reversed), ``hr = L L^T`` gives ``P^T H P = A A^T`` with the
    upper triangular ``A = J L J``, so its inverse is ``A^-T A^-1`` and ``U = A^-1 = J L^-1 J``. ``L`` is
    factorised in place in ``hr``, and ``L^-1`` solved a slab of columns at a time (on the trailing rows,
    where it is not zero) straight into the float32 result: alive at once are at most ``h`` and ``hr`` (two
    K x K float64: 63 MB each for the 2816-wide MLP input of a 1B model, 0.97 GB for the 11008-wide one of a
    7B), then ``L`` and the float32 ``U``."""
    diag = torch.diag(h).double()
    dead = diag == 0
    diag[dead] = 1.0
    perm = torch.argsort(diag, descending=True) if act_order else torch.arange(h.shape[0])
    mean_diag = float(diag.mean())
    info = torch.empty((), dtype=torch.int32)
    hr = None
    for attempt in range(6):
        d = damp * (10**attempt)
        del hr  # a failed factorisation overwrote it: freed before it is gathered again
        hr = _reversed(h, perm, dead)
        hr.diagonal().add_(d * mean_diag)
        torch.linalg.cholesky_ex(hr, out=(hr, info))
        if int(info) == 0:
            break
    else:
        raise ValueError("GPTQ: the Hessian stays singular even with heavy damping")
    if consume:
        del h
    if attempt:
        log.warning("GPTQ: Hessian not positive definite; damping raised to %.3g", d)
    k = hr.shape[0]
    u = torch.zeros(k, k, dtype=torch.float32)
    for j0 in range(0, k, _SOLVE_COLUMNS):
        j1 = min(j0 + _SOLVE_COLUMNS, k)
        rhs = torch.zeros(k - j0, j1 - j0, dtype=hr.dtype)
        rhs[: j1 - j0].fill_diagonal_(1.0)
        x = torch.linalg.solve_triangular(hr[j0:, j0:], rhs, upper=False)  # columns j0..j1 of L^-1, rows j0..
        u[: k - j0, k - j1 : k - j0] = x.flip(0, 1)  # U = J L^-1 J
    return Inverse(perm, dead, u, d)


def _reversed(h: torch.Tensor, perm: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """``J P^T H P J`` in float64, in one gather (a new matrix), with the dead inputs' diagonal set to 1."""
    rev = perm.flip(0)
    hr = h[rev[:, None], rev].double()
    hr.diagonal()[dead[rev]] = 1.0
    return hr


def gptq_rows(w: torch.Tensor, h: torch.Tensor | Inverse, qtype: QType, layout: Layout, symmetric: bool,
              scale_dtype: torch.dtype, damp: float = 0.01, act_order: bool = True, block_size: int = 128,
              clip_search: bool = True):
    """GPTQ on the weight rows ``w`` (C, K) with the Hessian ``h`` (K, K; not modified), or its
    :class:`Inverse` already taken (then ``damp`` and ``act_order`` are the ones it was taken with). Returns
    codes (C, K), scale and zero point (C, nb, 1).

    The Hessian is inverted in float64; the column sweep runs in float32, as the paper's reference does (its
    updates are memory-bound: float32 halves their traffic)."""
    inv = h if isinstance(h, Inverse) else inverse(h, damp, act_order)
    w = w.detach().float()
    c, k = w.shape
    if bool(inv.dead.any()):  # copied only then: the sweep works on its own transposed copy anyway
        w = w.clone()
        w[:, inv.dead] = 0.0
    rows_layout = Layout(layout.granularity, 0, layout.group)
    xb = rows_layout.to_blocks(w)
    if clip_search:
        scale, zp = search_qparams(xb, qtype, symmetric, scale_dtype)
    else:
        scale, zp = choose_qparams(xb, qtype, symmetric, scale_dtype)
    del xb
    _, _, nb, b = rows_layout.dims((c, k))
    perm = inv.perm
    col_block = (torch.arange(k) // b)[perm]  # the scale block of each swept column
    scale_rows = scale.reshape(-1, nb)
    zp_rows = None if zp is None else zp.reshape(-1, nb).float()
    codes = torch.empty(c, k, dtype=torch.int32)
    rows = max(1, _SWEEP_ELEMENTS // k)
    for r0 in range(0, c, rows):  # each output row's sweep is its own: a slab of rows at a time
        r1 = min(r0 + rows, c)
        # transposed (K, rows): one swept column is one contiguous row, its update one rank-1 ``addr_``
        qt = _sweep(w[r0:r1].T[perm], scale_rows[r0:r1], None if zp_rows is None else zp_rows[r0:r1], col_block,
                    inv.u, qtype, block_size)
        for j0 in range(0, k, _SOLVE_COLUMNS):  # a slab of columns at a time: no second transposed copy
            codes[r0:r1, perm[j0 : j0 + _SOLVE_COLUMNS]] = qt[j0 : j0 + _SOLVE_COLUMNS].T.to(torch.int32)
        del qt
    return codes, scale, zp


def _sweep(wt: torch.Tensor, scale_rows: torch.Tensor, zp_rows: torch.Tensor | None, col_block: torch.Tensor,
           hinv: torch.Tensor, qtype: QType, block_size: int) -> torch.Tensor:
    """The column sweep over ``wt`` (K, C: the weight rows transposed, columns in sweep order; updated in
    place) with ``U = hinv``; returns the codes (K, C) as float32."""
    k, c = wt.shape
    pivots = hinv.diagonal().tolist()
    qt = torch.empty(k, c, dtype=torch.float32)
    err = torch.empty(block_size, c, dtype=torch.float32)
    tmp = torch.empty(c, dtype=torch.float32)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1, h1 = wt[i1:i2], hinv[i1:i2, i1:i2]  # views: the sweep updates wt in place
        # the swept columns' scales (and zero points), (block, C): never a (K, C) copy of them
        st = scale_rows[:, col_block[i1:i2]].T.contiguous()
        zt = None if zp_rows is None else zp_rows[:, col_block[i1:i2]].T.contiguous()
        for i in range(i2 - i1):
            j = i1 + i
            col, code, e = w1[i], qt[j], err[i]
            torch.div(col, st[i], out=code).round_()
            if zt is None:
                code.clamp_(qtype.qmin, qtype.qmax)
                torch.mul(code, st[i], out=tmp)
            else:
                code.add_(zt[i]).clamp_(qtype.qmin, qtype.qmax)
                torch.sub(code, zt[i], out=tmp).mul_(st[i])
            torch.sub(col, tmp, out=e).div_(pivots[j])
            w1[i:].addr_(h1[i, i:], e, alpha=-1)
        if i2 < k:
            wt[i2:].addmm_(hinv[i1:i2, i2:].T, err[: i2 - i1], alpha=-1)  # in place: no (K, C) product
    return qt
