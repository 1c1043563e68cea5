"""bf16 (and, at a few rows, fp16 and fp8) weights with fp32 arithmetic, the weight never materialised as fp32 whole.

Dequantising a bf16 weight per call (the fallback) writes a fresh fp32 copy twice its size: on a 4096² layer a
fresh 64 MiB tensor, page-faulted on every call, made one row 15x slower than the fp32 layer. Here, up to
:data:`GEMV_ROWS` rows, a C GEMV widens each weight in registers (a bf16 is a float's high half, exactly) and reads
half the fp32 layer's bytes; from there the weight goes through the CPU's fp32 GEMM in panels of rows converted
into one small buffer. Both compute the float layer's products on the stored values; only the order of the sums
differs from it.
"""

from __future__ import annotations

import torch

from bitladder.kernels import fp32_gemm
from bitladder.kernels.base import ANY_ROWS, KernelUnsupported, LinearKernel
from bitladder.kernels.c_lowbit import c_module, simd_path
from bitladder.kernels.cpu import Cpu, current
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

GEMV_ROWS = 4  # the C GEMV's rows (BF16_ROWS in kernels/c/bf16.h)
PANEL_FLOATS = 1 << 19  # a converted panel of rows: 2 MiB of fp32, about an L2 (notes.md, 'bf16 weights')


@register
class Bf16Kernel(LinearKernel):
    """bf16 weights x fp32 activations: the C GEMV to :data:`GEMV_ROWS` rows (where built), else panels of rows
    converted to fp32 for the CPU's fp32 GEMM."""

    name = "bf16-fp32"
    fmt = "bf16"
    code = 0  # the C GEMV's format (WIDE_BF16 in kernels/c/bf16.h)
    auto_rows = ANY_ROWS
    rank = 40  # ahead of the fallback (dequant-fp32): the same arithmetic without the whole fp32 copy
    float_codes = True

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return (len(qt.shape) == 2 and qt.qtype.name == cls.fmt and qt.scale is None and qt.table is None
                and qt.mask is None)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "Bf16Kernel":
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {tuple(qt.shape)}: needs a 2-D {cls.fmt} weight without scales")
        self = cls()
        self.n, self.k = qt.shape
        self.wt = qt.codes().reshape(self.n, self.k).contiguous()  # the stored bf16 values, a view where they are
        self.w = self.wt.view(torch.int16).numpy()
        self.simd, self.gemm = simd_path(None, "avx512bw"), fp32_gemm.engine(current())
        return self

    def _in_c(self, m: int) -> bool:
        """Whether a call of ``m`` rows runs the C GEMV (else panels for the fp32 GEMM)."""
        return m <= GEMV_ROWS and c_module() is not None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        if self._in_c(m):
            y = torch.empty(m, self.n)
            c_module().wide16(self.w, x.numpy(), y.numpy(), m, self.n, self.k, self.code, self.simd,
                              torch.get_num_threads())
            return y
        rows = max(16, min(self.n, PANEL_FLOATS // max(self.k, 1)))
        if rows >= self.n:  # one panel: the whole (small) weight converted, the GEMM's output returned as it is
            return fp32_gemm.linear(x, self.wt.float(), None, self.gemm)
        panel, y = torch.empty(rows, self.k), torch.empty(m, self.n)
        for n0 in range(0, self.n, rows):
            n1 = min(self.n, n0 + rows)
            p = panel[: n1 - n0]
            p.copy_(self.wt[n0:n1])
            y[:, n0:n1] = fp32_gemm.linear(x, p, None, self.gemm)
        return y

    @property
    def nbytes(self) -> int:
        """Bytes of the bf16 weight."""
        return self.n * self.k * 2


@register
class Fp16GemvKernel(Bf16Kernel):
    """fp16 weights at a few rows: the same C GEMV, each weight widened by ``vcvtph2ps``. From ``GEMV_ROWS + 1`` rows
    fbgemm's fp16 GEMM (``fbgemm-fp16-codes``), which widens in registers too, is the better GEMM."""

    name = "c-fp16-gemv"
    fmt = "fp16"
    code = 1  # WIDE_FP16
    auto_rows = (1, GEMV_ROWS)
    rank = 20  # ahead of cast-fp32 (25) and fbgemm-fp16-codes (30) at the rows it takes

    @classmethod
    def installed(cls) -> bool:
        return c_module() is not None

    @classmethod
    def rows(cls, cpu: Cpu, qt: QuantizedTensor | None = None):
        return cls.auto_rows if cpu.has("avx2") else None  # the portable path is for correctness, not speed


@register
class Fp8GemvKernel(Fp16GemvKernel):
    """fp8 weights (e4m3, e5m2) with one scale per output channel or none, at a few rows: the same C GEMV reading one
    byte a weight where fbgemm's fp16 GEMM reads two; the scale applied to the output, as ``fbgemm-fp16-codes`` does."""

    name = "c-fp8-gemv"
    CODES = {"fp8_e4m3": 2, "fp8_e5m2": 3}  # WIDE_E4M3, WIDE_E5M2 in kernels/c/bf16.h

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        lay = qt.layout
        per_row = lay.granularity == "tensor" or lay.granularity == "channel" and lay.axis % 2 == 0
        return (len(qt.shape) == 2 and qt.qtype.name in cls.CODES and per_row and qt.zero_point is None
                and qt.table is None and qt.mask is None)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "Fp8GemvKernel":
        if not cls.applies(qt):
            raise KernelUnsupported(f"{qt.qtype.name} {tuple(qt.shape)}: needs a 2-D fp8 weight with one scale per "
                                    "output channel or none")
        self = cls()
        self.n, self.k = qt.shape
        self.wt = qt.codes().reshape(self.n, self.k).contiguous()
        self.w = self.wt.view(torch.uint8).numpy()
        self.code = cls.CODES[qt.qtype.name]
        scale = torch.ones(1) if qt.scale is None else qt.scale.float().reshape(-1)
        self._scale = scale.expand(self.n).contiguous()
        self._c_scale = self._scale * 256 if self.code == 2 else self._scale  # the GEMV reads e4m3 at 2^-8
        self.simd, self.gemm = simd_path(None, "avx512bw"), fp32_gemm.engine(current())
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return super()._run(x).mul_(self._c_scale if self._in_c(x.shape[0]) else self._scale)

    @property
    def nbytes(self) -> int:
        """Bytes of the fp8 weight and its scales."""
        return self.n * self.k + self.n * 4
