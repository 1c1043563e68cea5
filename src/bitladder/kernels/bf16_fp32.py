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
from bitladder.kernels.fp16_codes import MKL_ROWS, Fp16CodesKernel, per_row, small
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

GEMV_ROWS = 4  # the C GEMV's rows (BF16_ROWS in kernels/c/bf16.h)
PANEL_FLOATS = 1 << 19  # a converted panel of rows: 2 MiB of fp32, about an L2 (notes.md, 'bf16 weights')
FP16_TOP = 16  # a row scaled by a power of two to a largest magnitude in [2^15, 2^16): fp16's top binade
CHECK_FLOATS = 1 << 22  # rows checked at a time for the fp16 round trip (16 MiB of fp32 transients)


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
        return (len(qt.shape) == 2 and qt.qtype.name in cls.CODES and per_row(qt) and qt.zero_point is None
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


def fp16_shifts(wt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a bf16 weight, a power of two ``s`` (float32) and whether fp16 holds every ``w * 2**s`` exactly
    (bool): not for a row with a value whose lowest set bit lies more than 39 binades below the row's largest
    value, or with a NaN.

    bf16 keeps 8 significant bits; fp16 11, over exponents -24..15 with subnormals: a row whose largest magnitude
    is moved into [2^15, 2^16) keeps every value whose lowest bit is 2^-24 or above. Checked by the round trip back
    to the stored value."""
    n, k = wt.shape
    e = torch.frexp(wt.float().abs().amax(1) if n and k else torch.zeros(n))[1]  # |max| < 2^e
    shifts = (FP16_TOP - e).clamp(-126, 126).float()  # the multiplier and its inverse stay normal floats
    ok = torch.empty(n, dtype=torch.bool)
    step = max(1, CHECK_FLOATS // max(k, 1))
    for r0 in range(0, n, step):
        w = wt[r0: r0 + step].float()
        p = torch.exp2(shifts[r0: r0 + step])[:, None]
        ok[r0: r0 + step] = (w.mul(p).half().float().div_(p) == w).all(1)  # back to the value: an underflow fails
    return shifts, ok


@register
class Bf16Fp16Kernel(Fp16CodesKernel):
    """bf16 weights at batch on fbgemm's fp16 GEMM, exactly: each row times a power of two is a row of fp16s
    (:func:`fp16_shifts`), the inverse power applied to the output. fbgemm widens in registers and multiplies in
    fp32 FMAs, so the products are the float layer's on the stored values, without :class:`Bf16Kernel`'s panel
    conversion per call. A row fp16 cannot hold (none in the weights measured) is computed apart, converted."""

    name = "fbgemm-bf16-scaled"
    rank = 35  # ahead of bf16-fp32 (40) from the rows where the C GEMV stops

    @classmethod
    def rows(cls, cpu, qt=None):
        """Past the C GEMV's rows (where it is built); at every batch with AVX-512, to 512 rows without it, as
        fbgemm's fp16 GEMM runs float codes (:meth:`Fp16CodesKernel.rows`; ``cast-fp32`` goes first past 512 rows
        on Intel); never for a small weight, which one cast per call and the fp32 GEMM run faster than fbgemm's
        fixed cost (``cast-fp32``'s rule)."""
        if qt is not None and small(qt):
            return None
        lo = GEMV_ROWS + 1 if c_module() is not None else 1
        return (lo, ANY_ROWS[1] if cpu.has("avx512f") else MKL_ROWS)

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return Bf16Kernel.applies(qt)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "Bf16Fp16Kernel":
        if not (cls.installed() and cls.applies(qt)):
            raise KernelUnsupported(f"{qt.qtype.name} {tuple(qt.shape)}: needs a 2-D bf16 weight without scales, "
                                    "and fbgemm")
        self = cls()
        self.n, self.k = qt.shape
        wt = qt.codes().reshape(self.n, self.k)
        shifts, ok = fp16_shifts(wt)
        scaled = wt.float().mul_(torch.exp2(shifts)[:, None])
        self._apart = None if bool(ok.all()) else (~ok).nonzero().reshape(-1)
        if self._apart is not None:
            scaled[self._apart] = 0
            self._w_apart = wt[self._apart].contiguous()  # bf16, converted per call
        self._packed = torch.ops.quantized.linear_prepack_fp16(scaled, None)
        self._scale = torch.exp2(-shifts).contiguous()
        self._bytes = self.n * self.k * 2 + self.n * 4
        return self

    def _fused(self, x: torch.Tensor, bias: torch.Tensor | None, in_scale: torch.Tensor | None) -> torch.Tensor:
        y = super()._fused(x, bias, in_scale)
        if self._apart is not None:  # their packed rows are zeros: their outputs overwritten
            part = (x if in_scale is None else x * in_scale) @ self._w_apart.float().T
            y[:, self._apart] = part if bias is None else part + bias[self._apart]
        return y
