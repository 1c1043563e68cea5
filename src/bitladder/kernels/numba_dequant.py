"""Weight-only at large batches: dequantise the packed bit planes in one pass, then the CPU's fp32 GEMM.

At hundreds of rows a weight-only layer is bound by its fp32 GEMM, so the best it can do without bf16 or fp16
arithmetic is the fp32 GEMM plus the cheapest possible dequantisation. The general ``dequant-fp32`` path
unpacks through several torch passes and int16 copies; this one writes each int4 / int8 weight once from the
planes the numba GEMV already holds (codes stay packed in memory between calls): in C on torch's own OpenMP
pool where the extension is built (``kernels/c/dequant.h``), else in one serial numba pass (numba's pool and
torch's alternate badly on the same cores). Other widths reuse the GEMV's tile dequantisation; the loops live
in :mod:`numba_ops`. The GEMM is :mod:`bitladder.kernels.fp32_gemm`'s. Figures: docs/DESIGN.md, "Every CPU".
"""

from __future__ import annotations

import numpy as np
import torch

from bitladder.kernels import fp32_gemm
from bitladder.kernels.base import ANY_ROWS
from bitladder.kernels.c_lowbit import c_module
from bitladder.kernels.cpu import current
from bitladder.kernels.numba_kernels import NumbaLowbitKernel, ops
from bitladder.kernels.registry import register

@register
class NumbaDequantKernel(NumbaLowbitKernel):
    """The planes of :class:`NumbaLowbitKernel`, dequantised whole per call and handed to the
    CPU's fp32 GEMM (:mod:`bitladder.kernels.fp32_gemm`)."""

    name = "numba-dequant-fp32"
    auto_rows = ANY_ROWS  # ranked after every kernel that computes on the codes themselves
    rank = 900

    @classmethod
    def from_qtensor(cls, qt) -> "NumbaDequantKernel":
        self = super().from_qtensor(qt)
        self.name = f"numba-dequant-{qt.qtype.name}"
        self._zeros = np.zeros_like(self.s) if self.so is None else self.so
        cpu = current()
        self.gemm = fp32_gemm.engine(cpu)
        self.simd = int(cpu.has("avx2"))  # the C dequantisation's path: AVX2 (1) or portable (0)
        return self

    @classmethod
    def in_c(cls, qt) -> bool:
        """Whether this weight dequantises in one C pass (a single plane of 4 or 8 bits, the extension built)."""
        return c_module() is not None and qt.qtype.rules.integer_codes and qt.qtype.rules.width(qt.qtype) in (4, 8)

    def weight(self) -> torch.Tensor:
        """The dequantised (N, K) fp32 weight (a view of a padded (N, Kp) buffer)."""
        out = np.empty((self.n, self.kp), np.float32)
        if len(self.planes) == 1 and self.planes[0][0] in (4, 8) and self.planes[0][2] == 1.0:
            bits, w, _ = self.planes[0]  # the common cases (int4, int8) in one fused pass
            if c_module() is not None:  # numba stays unimported (a third of a second) where C does it
                c_module().dequant(w, self.s, self._zeros, out, self.n, self.kp, self.gp, bits,
                                   int(w.dtype == np.int8), self.simd, torch.get_num_threads())
            else:
                (ops().nibbles_scaled if bits == 4 else ops().bytes_scaled)(w, self.s, self._zeros, self.gp, out)
            return torch.from_numpy(out)[:, : self.k]
        o = ops()
        serial = {1: o.bits_into, 2: o.crumbs_into}  # int3 (2 + 1 planes) / int2 / ternary / binary
        for i, (bits, w, mult) in enumerate(self.planes):
            if bits in serial:
                serial[bits](w, np.float32(mult), i == 0, out)
            elif bits == 8:
                o.dequant_rows_b8(w, 0, self.n, out)
            else:
                o.dequant_rows(w, bits, np.float32(mult), 0, self.n, out, i == 0)
        o.scale_groups(out, self.s, self._zeros, self.gp)
        return torch.from_numpy(out)[:, : self.k]

    def _run(self, x):
        return fp32_gemm.linear(x, self.weight(), None, self.gemm)

    def _fused(self, x, bias, in_scale):
        # bias inside the GEMM: added in its epilogue instead of one more pass over the output
        return fp32_gemm.linear(x if in_scale is None else x * in_scale, self.weight(), bias, self.gemm)
