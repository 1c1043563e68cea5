"""Group-scaled weights of 4 bits or fewer on torch's packed-int4 CPU GEMM (``_weight_int4pack_mm_for_cpu``).

torch's CPU wheel ships the int4 "tinygemm" layout: two codes per byte, one (scale, offset) pair in
bf16 per group of 32-256 input channels, and a GEMM that unpacks the codes inside its kernel, with bf16
activations and fp32 accumulation. Its dequantised weight is ``(q - 8) * scale + offset``, so

* signed codes ``c`` (symmetric int4/int3/int2) are stored as ``q = c + 8`` with offset 0;
* unsigned codes ``u`` of 3 bits or fewer with zero point ``z`` as ``q = u - z + 8`` (within [1, 15]),
  offset 0; unsigned 4-bit codes as ``q = u`` with offset ``(8 - z) * scale`` (a large offset in bf16
  would cost 2-bit weights accuracy; 4-bit zero points sit near 8, so theirs stays small).

Nothing is dequantised per call. The numerics are weight-only up to bf16 rounding of the activation,
scale, offset and output.
It is fast only where the CPU has bf16 dot products (AVX512-BF16 or AMX); elsewhere it is not offered, and
automatic selection never takes it: the bf16 roundings are not negligible on every model.
Measured error and speed against fp32 ``F.linear``: docs/results/bench-linear.json and
docs/DESIGN.md, 'Group-scaled 4-bit-or-narrower codes at batch'.
"""

from __future__ import annotations

import torch

from bitladder.kernels.base import KernelUnsupported, LinearKernel, weight_parts
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

GROUPS = (32, 64, 128, 256)


@register
class Int4PackBf16Kernel(LinearKernel):
    """int4 / int3 / int2 codes with group scales as torch's packed int4, bf16 activations."""

    name = "torch-int4pack-bf16"
    kinds = ("int",)  # the packed-int4 GEMM takes signed nibbles of an integer grid
    requires = ("avx512_bf16",)  # bf16 dot products (AMX CPUs have them too); without, it is slower than fp32
    groups = GROUPS
    # only when named: its bf16 activations, scales and output change a model's fidelity with the host (tinylm
    # int4-g32 agreement, docs/DESIGN.md 'Auto keeps a rung's numerics on every CPU'), which auto must not
    auto_rows = None
    rank = 40

    @classmethod
    def installed(cls) -> bool:
        return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        """Integer codes of 4 bits or fewer, a group of 32-256 dividing K, N a multiple of 16."""
        lay, zp = qt.layout, qt.zero_point
        if not (qt.qtype.kind in cls.kinds and qt.qtype.bits <= 4 and len(qt.shape) == 2):
            return False
        n, k = qt.shape
        return (lay.granularity == "group" and lay.axis % 2 == 0 and lay.group in GROUPS and k % lay.group == 0
                and n % 16 == 0 and (zp is None or not zp.is_floating_point()))

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "Int4PackBf16Kernel":
        if not (cls.available() and cls.applies(qt)):
            raise KernelUnsupported(f"{qt.qtype.name} {qt.layout.granularity} {tuple(qt.shape)}: the packed-int4 GEMM "
                                    "needs integer codes of 4 bits or fewer, groups of 32-256 dividing K, N a "
                                    "multiple of 16, and a CPU with bf16 dot products")
        codes, scale, zp, g = weight_parts(qt)
        n, k = qt.shape
        if zp is None or qt.qtype.bits <= 3:  # signed codes in [-8, 7], or u - z in [-7, 7]
            zcol = 0 if zp is None else zp.repeat_interleave(g, dim=1)[:, :k]
            q, offset = codes - zcol + 8, torch.zeros_like(scale)
        else:
            q, offset = codes, (8 - zp).float() * scale
        self = cls()
        self.n, self.k, self.g = n, k, g
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)
        self._sz = torch.stack([scale.t(), offset.t()], dim=-1).to(torch.bfloat16).contiguous()  # (K/g, N, 2)
        self._bytes = self._packed.numel() + self._sz.numel() * 2
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self._packed, self.g, self._sz).float()

    @property
    def nbytes(self) -> int:
        """Bytes the packed int4 weight and its scales hold."""
        return self._bytes
