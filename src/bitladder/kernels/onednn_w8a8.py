"""W8A8 on oneDNN's integer GEMM (``torch.ops.onednn.qlinear_pointwise``, shipped in torch's CPU wheel).

The activation is quantised to uint8 by ``torch.quantize_per_tensor`` (one vectorised pass; its bytes
are then viewed as a plain uint8 tensor, no copy) and multiplied against the prepacked int8 weight
with int32 accumulation; oneDNN applies the activation scale, the per-channel weight scales and the
bias in the GEMM's epilogue. From a few hundred rows on it is faster than fbgemm's
``quantized.linear_dynamic`` (measured: docs/DESIGN.md, 'Two integer GEMMs for dynamic W8A8').

* per tensor (``int8-w8a8-onednn``): one asymmetric grid per call over ``[min(x, 0), max(x, 0)]``;
* per token (``int8-w8a8-onednn-token``): each row is divided by its absmax, the rows share one
  asymmetric grid in those units (the call's extreme normalised values), and each output row is
  multiplied back by its absmax: a scale per token with the zero point the GEMM needs to be one.

Without VNNI (oneDNN uses AVX-512 VNNI and AVX-VNNI alike) the u8 x s8 multiply-adds can saturate 16 bits,
so activations keep 7 bits there (fbgemm's ``reduce_range``).
"""

from __future__ import annotations

import warnings

import torch

from bitladder.kernels import hadamard
from bitladder.kernels.base import KernelUnsupported, LinearKernel, rows_times_plus, uint8_codes, weight_parts
from bitladder.kernels.base import uint8_grid as _grid
from bitladder.kernels.cpu import current
from bitladder.kernels.fbgemm_w8a8 import int8_per_row, levels_for
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor


def prepacked(qt: QuantizedTensor) -> tuple[torch.Tensor, object, torch.Tensor, torch.Tensor]:
    """(codes (N, K) int32, oneDNN's prepacked int8 weight, per-channel scales (N,), zero points (N,) of 0) of an
    int8 symmetric weight with one scale per output channel or per tensor."""
    codes, scale, _, _ = weight_parts(qt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = torch.ops.onednn.qlinear_prepack(codes.to(torch.int8).contiguous(), None)
    return codes, packed, scale[:, 0].float().contiguous(), torch.zeros(qt.shape[0], dtype=torch.int32)


@register
class OnednnW8A8Kernel(LinearKernel):
    """int8 symmetric per-channel (or per-tensor) weights, activations quantised per call."""

    name = "int8-w8a8-onednn"

    @classmethod
    def installed(cls) -> bool:
        return (hasattr(torch.ops, "onednn") and hasattr(torch.ops.onednn, "qlinear_pointwise")
                and "onednn" in torch.backends.quantized.supported_engines)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "OnednnW8A8Kernel":
        if not cls.installed():
            raise KernelUnsupported("torch has no oneDNN quantized linear (torch.ops.onednn.qlinear_pointwise)")
        if not cls.applies(qt):
            raise KernelUnsupported("oneDNN W8A8 needs int8 symmetric per-channel or per-tensor weights")
        self = cls()
        self.n, self.k = qt.shape
        codes, self._packed, self._scale, self._zp = prepacked(qt)
        self.levels = levels_for(codes, "onednn")
        self._bytes = self.n * self.k + self.n * 4
        self._simd = current().has("avx2")  # the C token pass's path, read once: the lookup costs a small call
        return self

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return int8_per_row(qt)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused(x, None, None)

    def _fused(self, x, bias, in_scale):
        return self.finish(self.prepare(x, in_scale), bias)

    def prepare(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple:
        """The quantised input, (M, K) float32 -> (uint8 codes, scale, zero point, row scales or None).
        Layers that read one tensor with one input scale (q, k, v) can share it (``QuantLinear`` does)."""
        xs = x if in_scale is None else x * in_scale
        scale, zp = _grid(float(xs.amin()), float(xs.amax()), self.levels)
        return uint8_codes(xs, scale, zp), scale, zp, None

    def finish(self, prep: tuple, bias: torch.Tensor | None) -> torch.Tensor:
        """(M, N) float32: the integer GEMM on :meth:`prepare`'s output, row scales and ``bias`` applied."""
        q, scale, zp, r = prep
        y = torch.ops.onednn.qlinear_pointwise(q, scale, zp, self._packed, self._scale, self._zp,
                                               None if bias is None or r is not None else bias.float(), 1.0, 0,
                                               torch.float32, "none", [], "")
        return y if r is None else rows_times_plus(y, r, bias)

    @property
    def nbytes(self) -> int:
        """Bytes the oneDNN int8 weight holds."""
        return self._bytes


@register
class OnednnW8A8TokenKernel(OnednnW8A8Kernel):
    """Per-token dynamic int8 activations (a scale per row) on the same GEMM."""

    name = "int8-w8a8-onednn-token"

    @property
    def rotates(self) -> bool:
        """Whether :meth:`prepare_rotated` runs here (the C transform was built)."""
        return hadamard.installed()

    def prepare_rotated(self, x: torch.Tensor, block: int) -> tuple:
        """:meth:`prepare` of ``x @ H`` (block-Hadamard) in C, without a float copy of the rotated input."""
        return hadamard.token_codes(x, block, self.levels, simd=self._simd)

    def prepare(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple:
        if hadamard.fast_path(x):  # the same bits in C, mostly in one pass over x
            return hadamard.token_codes(x, 1, self.levels, in_scale, self._simd)
        return hadamard.token_reference(x, 1, self.levels, in_scale)
