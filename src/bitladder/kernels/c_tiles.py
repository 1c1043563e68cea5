"""The C batch GEMM for codes of 1 to 4 bits (``tiles`` in ``kernels/c/lowbit.c``): the activation grid of
:class:`~bitladder.kernels.c_lowbit.CLowbitKernel` (int8 per block of up to 128 inputs) at any row count.

The GEMV sums each block's products along K and reduces them across SIMD lanes, which is cheap at a few rows
and the bound at hundreds (1504 rows of MiniLM ran below fp32). Here a vector lane is an output: weights are
repacked as columns of eight outputs, four codes per output and bit plane in each 32-bit lane, and four
activation codes are broadcast, so a block's dots land in the lanes of the outputs they belong to and the
block's scaling is one vector multiply per eight outputs (ggml's CPU path quantises activations to 8 bits per
block for every quantised matmul too). The columns a register tile reads together are stored interleaved
(:func:`~bitladder.kernels.packrows.panels`), one stream from memory per tile. :meth:`CTilesKernel.reference` is
the arithmetic in PyTorch; the AVX-512 VNNI, AVX-512 BW (512-bit registers without VNNI), AVX2 and portable C
paths give its bits.
"""

from __future__ import annotations

import numpy as np
import torch

from bitladder.kernels.base import ANY_ROWS, KernelUnsupported
from bitladder.kernels.c_lowbit import _STORE, CLowbitKernel, c_module, grid, int8_blocks, simd_path
from bitladder.kernels.cpu import Cpu, current
from bitladder.kernels.packrows import columns, panels
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor


#: columns of eight outputs packed per step (the uint16 planes of a step stay a few MB, as the GEMV's rows do)
_COLUMNS_PER_STEP = 32


def tiles_path(simd: int | None) -> int:
    """The tiles' C path: ``simd`` when forced, else 512-bit registers where the CPU, as ``BITLADDER_CPU``
    presents it, has AVX-512 BW: 4 with VNNI, 3 without (on an Intel Xeon 1.4-1.6x the 256-bit paths at 64-1504
    rows); else the GEMV's (2 with AVX-512 VNNI, 1 with AVX2, 0 without)."""
    path = simd_path(simd, "avx512_vnni")
    if simd is None and path and current().has("avx2", "avx512f", "avx512bw"):
        return {1: 3, 2: 4}[path]
    return path


@register
class CTilesKernel(CLowbitKernel):
    """Codes of 1, 2 or 4 stored bits x int8 activations per block, vectorised across outputs (the GEMV's
    arguments and `nbytes`, its own layout, rules and reference)."""

    name = "c-lowbit-tiles"
    entry = "tiles"
    # every row count: one activation grid whatever the request's size, and ahead of the GEMV from one row on
    # (docs/DESIGN.md, 'One grid for 1- to 4-bit codes at every batch')
    auto_rows = ANY_ROWS
    rank = 6

    @classmethod
    def installed(cls) -> bool:
        return c_module() is not None and hasattr(c_module(), "tiles")

    @classmethod
    def rows(cls, cpu: Cpu, qt: QuantizedTensor | None = None):
        return cls.auto_rows if cpu.has("avx2") else None  # the portable path is for correctness, not speed

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """The GEMV's weights whose codes are stored in 1, 2 or 4 bits (binary to int4)."""
        return CLowbitKernel.applies(qt) and _STORE[qt.qtype.rules.width(qt.qtype)] <= 4

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, simd: int | None = None) -> "CTilesKernel":
        """Repack once into columns of eight outputs, in panels of the path's tile width; ``simd`` forces a path as
        in :class:`CLowbitKernel`."""
        if not cls.installed():
            raise KernelUnsupported("the C kernels were not built (no compiler when bitladder was installed)")
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout.granularity}: needs codes of at most 4 bits and "
                                    "groups that are multiples of 32")
        scale, zp, g, bits, kp, xb = grid(qt)  # the GEMV's activation blocks
        q = qt.qtype
        n, k = qt.shape
        per = 8 // bits
        # K padded to whole blocks (and groups) only: the GEMV pads to 32-byte superblocks of 32 * per codes, which
        # quadruples a 64-input binary layer's work; its blocks past this K hold only zeros, so the grid is the same.
        # A layer narrower than one block takes one block of its width (in 32s): zeros move neither its absmax nor sums
        if scale.shape[1] == 1 and k < xb:
            xb = -(-k // 32) * 32
        kp = -(-k // g) * g if scale.shape[1] > 1 else -(-k // xb) * xb
        g = g if scale.shape[1] > 1 else kp
        self = cls()
        self.n, self.k, self.kp, self.g, self.bits, self.xb = n, k, kp, g, bits, xb
        nc, nbw = -(-n // 8), kp // g
        codes = qt.unsigned_codes().reshape(n, k).numpy()
        shifts = bits * np.arange(per, dtype=np.uint16)
        self.simd = tiles_path(simd)
        self.tn = c_module().panel_cols(self.simd)  # the path C runs for it here, and that path's tile width
        self.w = np.empty((nc, kp * bits), np.uint8)
        flat = self.w.reshape(-1)
        step = max(self.tn, _COLUMNS_PER_STEP // self.tn * self.tn)  # whole panels per step
        for c0 in range(0, nc, step):  # in steps: a whole LM head's uint16 planes would be GBs
            c1 = min(c0 + step, nc)
            u = np.zeros(((c1 - c0) * 8, kp), np.uint16)
            rows = codes[c0 * 8: c1 * 8]
            u[: len(rows), :k] = rows
            # (column, lane, vector, plane, j) -> (column, vector, lane, j) bytes with plane p at bits * p
            planes = u.reshape(c1 - c0, 8, kp // (4 * per), per, 4).transpose(0, 2, 1, 4, 3)
            cols = (planes << shifts).sum(-1, dtype=np.uint16).astype(np.uint8).reshape(c1 - c0, -1)
            flat[c0 * kp * bits: c1 * kp * bits] = panels(cols, self.tn)
        ws = np.zeros((nc * 8, nbw), np.float16)
        ws[:n, : scale.shape[1]] = scale.numpy()
        self.ws = np.ascontiguousarray(ws.reshape(nc, 8, nbw).transpose(0, 2, 1))
        mult, off = q.rules.affine(q)
        self.mult, self.off, self.zo = int(mult), int(off), None
        if zp is not None:
            zo = np.zeros((nc * 8, nbw), np.uint8)
            zo[:n, : zp.shape[1]] = (zp + off).numpy()
            self.zo, self.off = np.ascontiguousarray(zo.reshape(nc, 8, nbw).transpose(0, 2, 1)), 0
        return self

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel's arithmetic in PyTorch, step for step (the C paths must give these bits)."""
        m, n, bits, per = x.shape[0], self.n, self.bits, 8 // self.bits
        xq, s = int8_blocks(x, self.kp, self.xb)
        nc = self.w.shape[0]
        w = torch.from_numpy(columns(self.w, self.tn).astype(np.int64)).view(nc, -1, 8, 1, 4)
        u = (w >> (bits * torch.arange(per)).view(1, 1, 1, per, 1)) & ((1 << bits) - 1)
        u = u.permute(0, 2, 1, 3, 4).reshape(nc * 8, -1)[:n].reshape(n, -1, self.xb)
        dots = torch.einsum("nbk,mbk->mnb", u, xq)
        nbw = self.kp // self.g
        gw = torch.arange(self.kp // self.xb) * self.xb // self.g

        def per_output(a: np.ndarray) -> torch.Tensor:  # (nc, nbw, 8) -> (n, blocks)
            return torch.from_numpy(a.astype(np.float32)).permute(0, 2, 1).reshape(nc * 8, nbw)[:n][:, gw]

        off = per_output(self.zo).to(torch.int64) if self.zo is not None else self.off
        d = self.mult * dots - off * xq.sum(-1)[:, None, :]
        ws, xs = per_output(self.ws), s.squeeze(-1)
        y = torch.zeros(m, n)
        for b in range(d.shape[-1]):  # block terms in block order, as every C path adds them
            y = y + d[..., b].to(torch.float32) * (ws[None, :, b] * xs[:, None, b])
        return y
