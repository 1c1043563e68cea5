"""Exact weight-only compute at batch: fbgemm's packed-fp16 GEMM on the integer codes.

Integer codes (minus their zero point) of 8 bits or fewer are exact in fp16, and fbgemm's fp16-weight
GEMM converts the weights to fp32 inside its kernel (fp32 activations, fp32 accumulation), so
``(x @ codes^T) * scale`` equals the dequantised layer to fp32 rounding. It reads 2 bytes per weight
instead of 4, needs no dequantisation per call, and runs on torch's own thread pool. It applies when
each output channel has one scale (channel or tensor granularity); group scales cannot be taken out
of the sum. Faster than fp32 ``F.linear`` and than dequantise + fp32 at the shapes measured
(docs/DESIGN.md, 'Exact weight-only at batch'; docs/results/bench-linear.json).
"""

from __future__ import annotations

import torch

from bitladder.kernels.base import ANY_ROWS, KernelUnsupported, LinearKernel, weight_parts
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor


@register
class Fp16CodesKernel(LinearKernel):
    """Integer codes packed as fp16 for fbgemm, the per-channel scale applied to the output."""

    name = "fbgemm-fp16-codes"
    auto_rows = ANY_ROWS
    rank = 30

    @classmethod
    def rows(cls, cpu, qt=None):
        """At every batch with AVX-512; without it up to 512 rows (fbgemm's fp16 GEMM falls behind the fp32
        one at hundreds of rows there: docs/DESIGN.md, "Every CPU")."""
        return cls.auto_rows if cpu.has("avx512f") else (1, 512)

    @classmethod
    def installed(cls) -> bool:
        engines = torch.backends.quantized.supported_engines
        return hasattr(torch.ops.quantized, "linear_prepack_fp16") and "fbgemm" in engines

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """Whether this weight can run here: integer-like codes with one scale per output channel."""
        lay, zp = qt.layout, qt.zero_point
        return (qt.qtype.rules.integer_codes and qt.qtype.bits <= 8
                and len(qt.shape) == 2 and qt.scale is not None and (zp is None or not zp.is_floating_point())
                and (lay.granularity == "tensor" or lay.granularity == "channel" and lay.axis % 2 == 0))

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "Fp16CodesKernel":
        if not (cls.installed() and cls.applies(qt)):
            raise KernelUnsupported(f"{qt.qtype.name} with {qt.layout.granularity} scales: needs integer codes "
                                    "(8 bits or fewer) and one scale per output channel")
        codes, scale, zp, _ = weight_parts(qt)
        values = codes if zp is None else codes - zp[:, :1]
        self = cls()
        self.n, self.k = qt.shape
        self._packed = torch.ops.quantized.linear_prepack_fp16(values.float(), None)
        self._scale = scale[:, 0].float().contiguous()
        self._bytes = self.n * self.k * 2 + self.n * 4
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self._packed).mul_(self._scale)

    @property
    def nbytes(self) -> int:
        """Bytes the fp16 code matrix holds."""
        return self._bytes
