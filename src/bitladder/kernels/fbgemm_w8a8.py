"""int8 W8A8 on torch's fbgemm dynamic linear (``quantized.linear_dynamic``), per call or per token.

fbgemm takes one activation scale per call. Without AVX-512 VNNI its u8 x s8 multiply-adds sum pairs in 16
bits and can saturate (AVX-VNNI alone does not help: fbgemm has no kernel for it), so activations keep 7 bits
there (``reduce_range``); the kernel reads that from the CPU as :func:`bitladder.kernels.cpu.current`
presents it when it is built.
"""

from __future__ import annotations

import warnings

import torch

from bitladder.kernels import hadamard
from bitladder.kernels.base import KernelUnsupported, LinearKernel, rows_times_plus, weight_parts
from bitladder.kernels.cpu import current
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

I16_MAX = 32767


def act_levels(weight_max: int = 127, library: str = "fbgemm") -> int:
    """Steps of the uint8 activation grid against weight codes of magnitude <= ``weight_max`` on
    ``library``'s GEMM: all 255 where it adds products in 32 bits on this CPU (:meth:`Cpu.dot32`) or where no
    u8 x s8 pair sum can leave 16 bits (2 * 255 * 64 = 32640: weights of 7 bits or fewer), else 127
    (2 * 127 * 127 = 32258). fbgemm is the default: its condition is the stricter one."""
    return 255 if current().dot32(library) or 2 * 255 * weight_max <= I16_MAX else 127


def levels_for(codes: torch.Tensor, library: str = "fbgemm") -> int:
    """:func:`act_levels` against these weight codes."""
    return act_levels(int(codes.abs().max()) if codes.numel() else 0, library)


def int8_per_row(qt: QuantizedTensor) -> bool:
    """int8 (or int7) symmetric weights with one scale per output channel (or one per tensor)."""
    return (qt.qtype.name in ("int8", "int7") and qt.zero_point is None and len(qt.shape) == 2
            and (qt.layout.granularity == "tensor" or qt.layout.granularity == "channel" and qt.layout.axis % 2 == 0))


@register
class FbgemmW8A8Kernel(LinearKernel):
    """int8 symmetric per-channel (or per-tensor) weights through fbgemm's dynamic linear."""

    name = "int8-w8a8-fbgemm"

    @classmethod
    def installed(cls) -> bool:
        return any(e in torch.backends.quantized.supported_engines for e in ("fbgemm", "x86"))

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return int8_per_row(qt)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "FbgemmW8A8Kernel":
        if not cls.installed():
            raise KernelUnsupported("torch has no fbgemm/x86 quantized engine")
        if not cls.applies(qt):
            raise KernelUnsupported("fbgemm needs int8 symmetric per-channel or per-tensor weights")
        codes, scale, _, _ = weight_parts(qt)
        self = cls()
        self.n, self.k = qt.shape
        self.reduce_range = levels_for(codes) != 255  # 7-bit activations where a pair sum could leave 16 bits
        s = scale[:, 0].double()
        with warnings.catch_warnings():  # quantized tensor creation is deprecated, fbgemm is not
            warnings.simplefilter("ignore")
            wq = torch._make_per_channel_quantized_tensor(codes.to(torch.int8), s, torch.zeros_like(s, dtype=torch.long),
                                                          0)
            self._packed = torch.ops.quantized.linear_prepack(wq, None)
        self._bytes = self.n * self.k + self.n * 8
        self._simd = current().has("avx2")  # the C row passes' path, read once: the lookup costs a small call
        return self

    def _run(self, x):
        return torch.ops.quantized.linear_dynamic(x, self._packed, self.reduce_range)

    @property
    def nbytes(self) -> int:
        """Bytes the prepacked int8 weight holds."""
        return self._bytes


@register
class FbgemmW8A8TokenKernel(FbgemmW8A8Kernel):
    """Per-token dynamic int8 activations on fbgemm's integer GEMM.

    fbgemm's dynamic linear takes one activation scale per call; dividing each row by its absmax first
    makes that one grid [-1, 1] serve every row at full resolution, i.e. a scale per token
    (``absmax_row / 127``), and the row's absmax multiplies the integer result back.
    """

    name = "int8-w8a8-fbgemm-token"

    def _run(self, x):
        return self._fused(x, None, None)

    def _fused(self, x, bias, in_scale):
        return self.finish(self.prepare(x, in_scale), bias)

    @property
    def rotates(self) -> bool:
        """Whether :meth:`prepare_rotated` runs here (the C transform was built)."""
        return hadamard.installed()

    def prepare_rotated(self, x: torch.Tensor, block: int) -> tuple:
        """:meth:`prepare` of ``x @ H`` (block-Hadamard): rotation and row division in one C call."""
        return hadamard.fwht_rows(x, block, self._simd)

    def prepare(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple:
        """(rows divided by their absmax, the absmax): what layers reading one tensor can share. One C call where
        it was built (same bits; at a sentence's few rows five tensor operations' call costs were most of it)."""
        if hadamard.fast_path(x):
            return hadamard.fwht_rows(x, 1, self._simd, in_scale)
        return hadamard.rows_reference(x, 1, in_scale)

    def finish(self, prep: tuple, bias: torch.Tensor | None) -> torch.Tensor:
        """Integer GEMM on :meth:`prepare`'s output, rows multiplied back by their absmax, plus ``bias``."""
        xn, r = prep
        return rows_times_plus(torch.ops.quantized.linear_dynamic(xn, self._packed, self.reduce_range), r, bias)
