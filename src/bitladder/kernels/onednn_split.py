"""Weight-only int8 at batch on oneDNN's integer GEMM: float activations as three 8-bit integer pieces.

Each row of ``x`` is divided by ``r`` = its absmax / 127 and written as ``u = a1 + a2 / 254 + a3 / 254^2 + e``
with integer pieces in [-127, 127] and ``|e| <= 0.5 / 254^2``: every element within 2^-24 of the row's absmax,
fp32's own step at that magnitude. The pieces run as one u8 x s8 GEMM of 3M rows against the int8 codes (zero
point 128, exact 32-bit sums); one more pass (:func:`split_sum`) makes ``y = r * (Y1 + (Y2 + Y3 / 254) / 254) *
scale + bias``. Against the float64 product it is closer than fp32 ``F.linear`` itself (3-7x on MiniLM's shapes
at 1504 rows), so the rung stays weight-only. It needs the products added into 32 bits (VNNI or AMX: else a
255-step piece could saturate the 16-bit pair sums), and auto takes it only with AMX, whose integer GEMM outruns
one fp32 GEMM three times over (docs/DESIGN.md, 'Weight-only int8 on the integer GEMM').
"""

from __future__ import annotations

import torch

from bitladder.kernels import hadamard
from bitladder.kernels.base import KernelUnsupported, LinearKernel, rows_times_plus
from bitladder.kernels.cpu import Cpu, current
from bitladder.kernels.fbgemm_w8a8 import int8_per_row
from bitladder.kernels.onednn_w8a8 import OnednnW8A8Kernel, prepacked
from bitladder.kernels.registry import register
from bitladder.tensor.quantized import QuantizedTensor

#: the multiply-adds (rows x weight size) from which the split outruns the next kernel auto has, on an Intel Xeon
#: with AMX: 1024 x 1024 from 8 rows (1.54x fp32 against MatMulNBits' 1.32x), 4096 x 4096 from 3; a side under 512
#: costs more per multiply-add (384 x 384 overtakes fbgemm's fp16 GEMM at about 256 rows, 0.93x against 0.80x)
MIN_MACS = 1 << 23
MIN_MACS_NARROW = 1 << 25
#: each piece's steps per step of the one before (a residual in [-0.5, 0.5] becomes [-127, 127])
SUB = 254.0


def split_reference(x: torch.Tensor, pieces: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((pieces * M, K) uint8, (M, 1) float32) for float32 ``x`` (M, K): ``r`` = each row's largest magnitude
    (at least 1e-30) / 127, and rows ``p * M`` on of piece ``p``: ``nearbyint(u) + 128``, then
    ``u = (u - nearbyint(u)) * SUB``, from ``u = x / r``. What :func:`split_codes` does in C."""
    m, k = x.shape
    r = torch.maximum(x.amax(1, keepdim=True), x.amin(1, keepdim=True).neg_()).clamp_(min=1e-30).div_(127.0)
    u = x / r
    q = torch.empty(pieces * m, k, dtype=torch.uint8)
    for p in range(pieces):
        a = u.round()
        q[p * m: (p + 1) * m] = a + 128.0
        u = u.sub_(a).mul_(SUB)
    return q, r


def split_codes(x: torch.Tensor, pieces: int, simd: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`split_reference` with the same bits, in one C pass per row where the extension was built."""
    if not hadamard.installed():
        return split_reference(x, pieces)
    m, k = x.shape
    xc = x.contiguous()
    q, r = torch.empty(pieces * m, k, dtype=torch.uint8), torch.empty(m, 1)
    use_simd = current().has("avx2") if simd is None else bool(simd)
    hadamard._hadamard.split_codes(xc.numpy(), q.numpy(), r.numpy(), m, k, pieces, int(use_simd),
                                   torch.get_num_threads())
    return q, r


def split_sum(y: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None, pieces: int,
              simd: bool | None = None) -> torch.Tensor:
    """(M, N): the split GEMM's output ``y`` (pieces * M, N) summed in Horner's form (the smallest piece first),
    times the row scales ``r`` (M, 1), plus ``bias``; in one C pass over ``y``'s first M rows where the extension
    was built, else in PyTorch (and where a trained bias needs its gradient)."""
    m = r.shape[0]
    grad = bias is not None and bias.requires_grad and torch.is_grad_enabled()
    if hadamard.installed() and not grad and y.is_contiguous():
        b = torch.empty(0) if bias is None else bias.detach().float().contiguous()
        use_simd = current().has("avx2") if simd is None else bool(simd)
        hadamard._hadamard.split_sum(y.numpy(), r.numpy(), b.numpy(), m, y.shape[1], pieces, int(use_simd),
                                     torch.get_num_threads())
        return y[:m]
    out = y[(pieces - 1) * m:]
    for p in range(pieces - 2, -1, -1):
        out = y[p * m: (p + 1) * m].add_(out, alpha=1.0 / SUB)
    return rows_times_plus(out, r, bias)


@register
class OnednnSplitKernel(LinearKernel):
    """int8 symmetric per-channel (or per-tensor) weights; float activations to fp32's step at each row's absmax."""

    name = "int8-onednn-split"
    # auto: with AMX only. With AVX-512 VNNI alone three integer GEMMs merely tie fbgemm's fp16 one (0.86-1.05x
    # fp32 against 0.79-0.92x on MiniLM's shapes at 1504 rows, oneDNN capped at AVX512_CORE_VNNI on the Xeon)
    requires = ("amx",)
    auto_rows = (3, 1 << 62)
    rank = 8  # ahead of MatMulNBits' int8 activations: faster where its rows hold, and no coarser than fp32
    pieces = 3

    @classmethod
    def rows(cls, cpu: Cpu, qt: QuantizedTensor | None = None) -> tuple[int, int] | None:
        """From 3 rows (below, the C GEMV) and from as many as make :data:`MIN_MACS` multiply-adds, or
        :data:`MIN_MACS_NARROW` for a weight with a side under 512: splitting the input and adding the pieces'
        outputs cost per input and output element, the GEMM's saving per multiply-add."""
        if qt is None:
            return cls.auto_rows
        n, k = qt.shape
        macs = MIN_MACS if min(n, k) >= 512 else MIN_MACS_NARROW
        return max(cls.auto_rows[0], -(-macs // (n * k))), cls.auto_rows[1]

    @classmethod
    def installed(cls) -> bool:
        return OnednnW8A8Kernel.installed()

    @classmethod
    def applies(cls, qt: QuantizedTensor) -> bool:
        return int8_per_row(qt)

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "OnednnSplitKernel":
        if not cls.installed():
            raise KernelUnsupported("torch has no oneDNN quantized linear (torch.ops.onednn.qlinear_pointwise)")
        if not cls.applies(qt):
            raise KernelUnsupported("the split int8 GEMM needs int8 symmetric per-channel or per-tensor weights")
        if not current().dot32("onednn"):
            raise KernelUnsupported("the split int8 GEMM needs VNNI or AMX: without them oneDNN adds u8 x s8 "
                                    "products in 16-bit pairs, which its 255-step pieces would saturate")
        self = cls()
        self.n, self.k = qt.shape
        _, self._packed, self._scale, self._zp = prepacked(qt)
        self._bytes = self.n * self.k + self.n * 4
        self._simd = current().has("avx2")  # the C passes' path, read once: the lookup costs a call per layer call
        return self

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused(x, None, None)

    def _fused(self, x, bias, in_scale):
        q, r = split_codes(x if in_scale is None else x * in_scale, self.pieces, self._simd)
        y = torch.ops.onednn.qlinear_pointwise(q, 1.0, 128, self._packed, self._scale, self._zp, None, 1.0, 0,
                                               torch.float32, "none", [], "")
        return split_sum(y, r, bias, self.pieces, self._simd)

    @property
    def nbytes(self) -> int:
        """Bytes the oneDNN int8 weight holds."""
        return self._bytes
