"""Exact weight-only compute at batch: fbgemm's packed-fp16 GEMM on the integer codes.

Integer codes (minus their zero point) of 8 bits or fewer are exact in fp16, and fbgemm's fp16-weight
GEMM converts the weights to fp32 inside its kernel (fp32 activations, fp32 accumulation), so
``(x @ codes^T) * scale`` equals the dequantised layer to fp32 rounding. It reads 2 bytes per weight
instead of 4, needs no dequantisation per call, and runs on torch's own thread pool. It applies when
each output channel has one scale (channel or tensor granularity); group scales cannot be taken out
of the sum. Faster than fp32 ``F.linear`` and than dequantise + fp32 at the shapes measured
(docs/DESIGN.md, 'Exact weight-only at batch'; docs/results/bench-linear.json).

Float codes fp16 holds exactly take it too: fp16 itself and both fp8 formats (3 and 2 mantissa bits,
exponents within fp16's). Those rungs dequantised their whole weight every call before, which ran MiniLM at
one sentence below fp32 for fp8 (same heading). bf16 is not among them: its exponents reach far below fp16's; a
bf16 row times a power of two usually is an fp16 row, which ``fbgemm-bf16-scaled`` (kernels/bf16_fp32.py) uses.
"""

from __future__ import annotations

import math

import torch

from bitladder.kernels.base import (ANY_ROWS, DequantKernel, KernelUnsupported, LinearKernel, rows_times_plus,
                                   weight_parts)
from bitladder.kernels.numba_dequant import NumbaDequantKernel
from bitladder.kernels.registry import register
from bitladder.kernels.widen import FP8, fast, widened
from bitladder.tensor.quantized import QuantizedTensor


#: float formats every value of which fp16 holds exactly (fp8 e4m3: exponents -6..8, 3 mantissa bits; e5m2: the
#: exponents of fp16, 2 mantissa bits)
FP16_HOLDS = ("fp16", "fp8_e4m3", "fp8_e5m2")


#: vendors on whose AVX-512 cores MKL's sgemm outruns fbgemm's fp16-weight GEMM at batch: past 512 rows integer
#: codes take the C dequantisation + the fp32 GEMM (``numba-dequant-fp32``). Intel Xeon, MiniLM's shapes at 1504
#: rows: 0.90-1.00x fp32 against 0.82-0.85x under the AVX-512 caps, 0.92-1.02x against 0.84-0.90x natively; at 256
#: rows fbgemm's was level or ahead. Float codes of up to :data:`CAST_MAX` elements are cast per call there
MKL_AHEAD = ("GenuineIntel",)
#: weights of at most this many elements run faster dequantised whole every call than through fbgemm's fp16 GEMM,
#: whose cost per call is fixed, where the dequantisation is cheap: integer codes in one C pass
#: (``numba-dequant-fp32``), float formats by a cast (:class:`CastKernel`; fp8 where its C pass is built: torch's
#: fp8 cast is slow) (docs/results/notes.md, 'Small layers')
SMALL_WEIGHTS = 16384
CAST_DEQUANT = ("fp16", "bf16")
#: the rows from which MKL's sgemm outruns fbgemm's fp16 GEMM on the vendors of :data:`MKL_AHEAD` (and where fbgemm
#: stops without AVX-512)
MKL_ROWS = 512
#: the largest float weight (elements) cast whole per call past :data:`MKL_ROWS` there: a larger weight's fresh
#: fp32 copy each call page-faults, and fbgemm's GEMM is the faster (notes.md, 'bf16 weights at batch')
CAST_MAX = 1 << 22


def per_row(qt: QuantizedTensor) -> bool:
    """Whether a weight has one scale per output channel (axis 0), one for the tensor, or none."""
    lay = qt.layout
    return lay.granularity == "tensor" or lay.granularity == "channel" and lay.axis % 2 == 0


def small(qt: QuantizedTensor) -> bool:
    """Whether a weight has at most :data:`SMALL_WEIGHTS` elements."""
    return math.prod(qt.shape) <= SMALL_WEIGHTS


@register
class Fp16CodesKernel(LinearKernel):
    """Integer codes (or float codes fp16 holds exactly) packed as fp16 for fbgemm, the per-channel scale applied
    to the output."""

    name = "fbgemm-fp16-codes"
    auto_rows = ANY_ROWS
    rank = 30
    float_codes = True

    @classmethod
    def rows(cls, cpu, qt=None):
        """At every batch with AVX-512; up to 512 rows without it, and for integer codes on the vendors of
        :data:`MKL_AHEAD` (fbgemm's fp16 GEMM falls behind the fp32 one at hundreds of rows there, and integer
        codes dequantise in C for it: docs/DESIGN.md, "Every CPU"); never for integer codes of
        :data:`SMALL_WEIGHTS` or fewer that one C pass dequantises."""
        if qt is not None and small(qt) and NumbaDequantKernel.in_c(qt):
            return None  # the C dequantisation + fp32 GEMM (numba-dequant-fp32)
        if not cpu.has("avx512f"):
            return (1, MKL_ROWS)
        if cpu.vendor in MKL_AHEAD and qt is not None and qt.qtype.rules.integer_codes:
            return (1, MKL_ROWS)
        return cls.auto_rows

    @classmethod
    def installed(cls) -> bool:
        engines = torch.backends.quantized.supported_engines
        return hasattr(torch.ops.quantized, "linear_prepack_fp16") and "fbgemm" in engines

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """Whether this weight can run here: integer-like codes of 8 bits or fewer, or float codes fp16 holds
        (:data:`FP16_HOLDS`), with one scale per output channel (or per tensor, or none for float codes)."""
        zp, q = qt.zero_point, qt.qtype
        if len(qt.shape) != 2 or not per_row(qt) or qt.table is not None:
            return False
        if q.rules.integer_codes:
            return q.bits <= 8 and qt.scale is not None and (zp is None or not zp.is_floating_point())
        return zp is None and q.name in FP16_HOLDS

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "Fp16CodesKernel":
        if not (cls.installed() and cls.applies(qt)):
            raise KernelUnsupported(f"{qt.qtype.name} with {qt.layout.granularity} scales: needs integer codes "
                                    "(8 bits or fewer) or float codes fp16 holds exactly, and one scale per "
                                    "output channel")
        self = cls()
        self.n, self.k = qt.shape
        if qt.qtype.rules.integer_codes:
            codes, scale, zp, _ = weight_parts(qt)
            values, scale = (codes if zp is None else codes - zp[:, :1]), scale[:, 0]
        else:
            values = qt.codes().reshape(self.n, self.k)
            scale = None if qt.scale is None else qt.scale.float().reshape(-1).expand(self.n)
        self._packed = torch.ops.quantized.linear_prepack_fp16(values.float(), None)
        self._scale = None if scale is None else scale.float().contiguous()
        self._bytes = self.n * self.k * 2 + (0 if scale is None else self.n * 4)
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic_fp16(x, self._packed)
        return y if self._scale is None else y.mul_(self._scale)

    def _fused(self, x: torch.Tensor, bias: torch.Tensor | None, in_scale: torch.Tensor | None) -> torch.Tensor:
        """The channel scales and the bias in one pass over the output: at a thousand rows a second pass is a
        visible share of the call."""
        if self._scale is None or bias is None:
            return super()._fused(x, bias, in_scale)
        y = torch.ops.quantized.linear_dynamic_fp16(x if in_scale is None else x * in_scale, self._packed)
        return rows_times_plus(y, self._scale, bias)

    @property
    def nbytes(self) -> int:
        """Bytes the fp16 code matrix holds."""
        return self._bytes


@register
class CastKernel(DequantKernel):
    """A float weight (a format :data:`CAST_DEQUANT` names, or fp8 with channel scales where the C pass casts it)
    cast to fp32 every call, then the fp32 GEMM (the float layer's arithmetic on the stored values): a small
    weight other than bf16 at every batch, ahead of fbgemm's fixed cost;
    a weight of up to :data:`CAST_MAX` elements past :data:`MKL_ROWS` rows where MKL's GEMM outruns fbgemm's fp16
    one (:data:`MKL_AHEAD`) or fbgemm stops (no AVX-512)."""

    name = "cast-fp32"
    rank = 25  # ahead of fbgemm-fp16-codes (30) and the bf16 kernels (35, 40) where its rows hold

    def __init__(self, qt: QuantizedTensor) -> None:
        super().__init__(qt)
        self._values = qt.codes().reshape(self.n, self.k).contiguous()  # a view of the stored bytes where it can be
        self._scale = None if qt.scale is None else qt.scale.float().reshape(-1).expand(self.n).contiguous()

    @classmethod
    def rows(cls, cpu, qt=None):
        if qt is None or small(qt) and qt.qtype.name != "bf16":  # a small bf16: bf16-fp32 casts it whole too
            return cls.auto_rows
        if math.prod(qt.shape) <= CAST_MAX and (cpu.vendor in MKL_AHEAD or not cpu.has("avx512f")):
            return (MKL_ROWS + 1, ANY_ROWS[1])
        return None

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """fp16 or bf16, or fp8 with one scale per output channel (or none) where its cast is fast
        (:func:`bitladder.kernels.widen.fast`: the C pass)."""
        name = qt.qtype.name
        fmt = name in CAST_DEQUANT and qt.scale is None or name in FP8 and per_row(qt) and fast(name)
        return len(qt.shape) == 2 and fmt and qt.zero_point is None and qt.table is None and qt.mask is None

    def _weight(self) -> torch.Tensor:
        return widened(self._values, self._scale)
