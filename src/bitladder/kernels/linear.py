"""Linear kernels: ``y = x @ W.T`` straight from a packed :class:`QuantizedTensor`.

Each kernel is built once from the weight (``Kernel.from_qtensor(qt)``), repacks it into its own
runtime layout (still low-bit: no fp32 copy of the weight is kept) and is then called with a float32
activation ``x`` of shape (M, K), returning (M, N) float32. ``reference_linear`` (dequantise +
matmul) is what every kernel is tested against.

=====================  ==========================================================================
name                   what it does
=====================  ==========================================================================
dequant-fp32           reference / fallback: dequantise the whole weight, ``F.linear``
int8-w8a8-fbgemm       int8 per-channel symmetric weights, activation quantised per call
                       (per tensor; 7-bit without VNNI) and an integer GEMM: torch's fbgemm
                       ``quantized.linear_dynamic``
int8-w8a8-fbgemm-token the same GEMM with one activation scale per row (token): each row is
                       divided by its absmax, quantised on the [-1, 1] grid, and the integer
                       result multiplied back by the row's absmax
int8-w8a8-onednn[-token] the same numerics on oneDNN's u8 x s8 GEMM (``onednn.qlinear_pointwise``;
                       faster from ~256 rows, see ``onednn_w8a8``)
ort-w{2,4,8}a8         onnxruntime ``MatMulNBits`` (accuracy_level 4: int8 activations per
                       block, VNNI/AVX2 integer dots); int3 runs as 4-bit, ternary/binary as 2-bit
numba-w{b}             weight-only (fp32 activations): GEMV from the packed bit planes (int3 = a
                       2-bit + a 1-bit plane, ternary = 2-bit, binary = 1-bit sign-add), code
                       offsets folded into per-group sums of x; for M >= 4 it dequantises row
                       tiles (<= 4 MiB) in numba and calls the BLAS matmul on each tile
binary-xnor            binary weights x sign(x) (XNOR-Net: per-token scale mean|x|), 64 weights
                       per uint64 word, XOR + popcount
=====================  ==========================================================================
"""

from __future__ import annotations

import abc
import functools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from bitladder.errors import BitladderError
from bitladder.kernels import onnx_nbits
from bitladder.tensor.quantized import QuantizedTensor, _unpack


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    """/proc/cpuinfo, read once ("" where it cannot be read: every feature test then says no)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def _has_vnni() -> bool:
    """Whether this CPU has VNNI (asked on every int8 call: cached)."""
    return "avx512_vnni" in _cpu_flags() or "avx_vnni" in _cpu_flags()


class KernelUnsupported(BitladderError):
    """This kernel cannot run this weight (format, layout, group size or missing backend)."""


def reference_linear(qt: QuantizedTensor, x: torch.Tensor) -> torch.Tensor:
    """The ground truth: dequantise to fp32 and matmul."""
    return F.linear(x.float(), qt.dequantize(torch.float32))


# ---- weight normalisation --------------------------------------------------------------------------
def _weight_parts(qt: QuantizedTensor):
    """(codes (N, K) int32, scale (N, nb) fp32, zero point (N, nb) int32 or None, group G).

    Tensor and channel granularities become one group per row of length K.
    """
    if qt.qtype.kind == "float":
        raise KernelUnsupported(f"{qt.qtype.name} is a float format")
    if len(qt.shape) != 2:
        raise KernelUnsupported(f"Linear weights are 2-D, got shape {qt.shape}")
    n, k = qt.shape
    lay = qt.layout
    if lay.granularity != "tensor" and lay.axis % 2 != 0:
        raise KernelUnsupported("the output channel must be axis 0")
    c, _, nb, b = lay.dims(qt.shape)
    codes = qt.codes().reshape(n, k).to(torch.int32)
    scale = qt.scale.float().reshape(c, nb)
    zp = None
    if qt.zero_point is not None:
        zp = _unpack(qt.zero_point, qt.qtype, c * nb).reshape(c, nb).to(torch.int32)
    if lay.granularity == "tensor":
        scale = scale.expand(n, 1)
        zp = None if zp is None else zp.expand(n, 1)
        g = k
    elif lay.granularity == "channel":
        g = k
    else:
        g = b
    return codes, scale.contiguous(), None if zp is None else zp.contiguous(), g


def rows_times_plus(y: torch.Tensor, r: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``y * r + bias`` written over ``y``, a GEMM's fresh output: the per-token kernels' last step.

    In place because a new large tensor per layer is what cost the time here, not the arithmetic: on
    the 2-core EPYC MiniLM per token + SmoothQuant ran 107.6 against 122.6 ms (and 93.1 against 106.0)
    in interleaved runs of the same model, the only change being ``out=y``. Autograd cannot record an
    ``out=`` call, so a bias that is being trained gets a new tensor."""
    if bias is None:
        return y.mul_(r)
    if bias.requires_grad and torch.is_grad_enabled():
        return torch.addcmul(bias, y, r)
    return torch.addcmul(bias, y, r, out=y)


def _as_x(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"expected x of shape (M, {k}), got {tuple(x.shape)}")
    return x.detach().float().contiguous()


class LinearKernel(abc.ABC):
    """Base class: ``from_qtensor`` builds, calling runs, ``nbytes`` is the memory it holds."""

    name = "kernel"

    n: int
    k: int

    @classmethod
    def available(cls) -> bool:
        return True

    @classmethod
    @abc.abstractmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "LinearKernel":
        """Build (and repack once) from a quantised weight; raise KernelUnsupported if it cannot."""

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None,
                 in_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``(x * in_scale) @ W.T + bias`` for (M, K) ``x``; the optional parts are the layer's."""
        x = _as_x(x, self.k)
        if x.shape[0] == 0:
            return torch.zeros(0, self.n)
        return self._fused(x, bias, in_scale)

    def _fused(self, x: torch.Tensor, bias: torch.Tensor | None, in_scale: torch.Tensor | None) -> torch.Tensor:
        """Input scale, kernel, bias, one after the other; kernels that can fuse them override this."""
        y = self._run(x if in_scale is None else x * in_scale)
        return y if bias is None else y.add_(bias)

    @abc.abstractmethod
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """(M, K) float32 with M > 0 -> (M, N) float32."""

    @property
    def nbytes(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, N={self.n}, K={self.k}, nbytes={self.nbytes})"


def _nbytes(*arrays) -> int:
    total = 0
    for a in arrays:
        if a is None:
            continue
        total += a.numel() * a.element_size() if isinstance(a, torch.Tensor) else a.nbytes
    return total


class DequantKernel(LinearKernel):
    """The fallback: what QuantLinear does today (dequantise every call)."""

    name = "dequant-fp32"

    def __init__(self, qt: QuantizedTensor) -> None:
        self.qt = qt
        self.n, self.k = qt.shape

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "DequantKernel":
        return cls(qt)

    def _run(self, x):
        return reference_linear(self.qt, x)

    @property
    def nbytes(self) -> int:
        return self.qt.nbytes


class FbgemmW8A8Kernel(LinearKernel):
    """int8 symmetric per-channel (or per-tensor) weights through fbgemm's dynamic linear."""

    name = "int8-w8a8-fbgemm"

    @classmethod
    def available(cls) -> bool:
        return any(e in torch.backends.quantized.supported_engines for e in ("fbgemm", "x86"))

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor) -> "FbgemmW8A8Kernel":
        if not cls.available():
            raise KernelUnsupported("torch has no fbgemm/x86 quantized engine")
        if qt.qtype.name != "int8" or qt.layout.granularity == "group" and qt.scale.shape[1] != 1:
            raise KernelUnsupported("fbgemm needs int8 symmetric per-channel or per-tensor weights")
        codes, scale, _, _ = _weight_parts(qt)
        self = cls()
        self.n, self.k = qt.shape
        s = scale[:, 0].double()
        with warnings.catch_warnings():  # quantized tensor creation is deprecated, fbgemm is not
            warnings.simplefilter("ignore")
            wq = torch._make_per_channel_quantized_tensor(codes.to(torch.int8), s, torch.zeros_like(s, dtype=torch.long),
                                                          0)
            self._packed = torch.ops.quantized.linear_prepack(wq, None)
        self._bytes = self.n * self.k + self.n * 8
        return self

    def _run(self, x):
        # reduce_range (7-bit activations) keeps vpmaddubsw from saturating on CPUs without VNNI;
        # with VNNI the full 8 bits are safe
        return torch.ops.quantized.linear_dynamic(x, self._packed, not _has_vnni())

    @property
    def nbytes(self) -> int:
        return self._bytes


class FbgemmW8A8TokenKernel(FbgemmW8A8Kernel):
    """Per-token dynamic int8 activations on fbgemm's integer GEMM.

    fbgemm's dynamic linear takes one activation scale per call; dividing each row by its absmax first
    makes that one grid [-1, 1] serve every row at full resolution, i.e. a scale per token
    (``absmax_row / 127``), and the row's absmax multiplies the integer result back. MiniLM: mean cosine
    0.9977 per token against 0.9930 per tensor (0.9991 with SmoothQuant alpha 0.5 on top).
    """

    name = "int8-w8a8-fbgemm-token"

    def _run(self, x):
        return self._fused(x, None, None)

    def _fused(self, x, bias, in_scale):
        return self.finish(self.prepare(x, in_scale), bias)

    def prepare(self, x: torch.Tensor, in_scale: torch.Tensor | None) -> tuple:
        """(rows divided by their absmax, the absmax): what layers reading one tensor can share."""
        xs = x if in_scale is None else x * in_scale
        # max(max, -min) runs ~2x faster than abs().amax() here, and 20x faster than vector_norm(inf); a
        # fused numba pass (row max, scale, divide) was faster alone but not inside the model (203 vs 195 ms)
        r = torch.maximum(xs.amax(dim=1, keepdim=True), xs.amin(dim=1, keepdim=True).neg_()).clamp_(min=1e-30)
        return (xs.div_(r) if xs is not x else xs / r), r

    def finish(self, prep: tuple, bias: torch.Tensor | None) -> torch.Tensor:
        xn, r = prep
        return rows_times_plus(torch.ops.quantized.linear_dynamic(xn, self._packed, not _has_vnni()), r, bias)


_ORT_BITS = {8: 8, 7: 8, 6: 8, 5: 8, 4: 4, 3: 4, 2: 2}


class OrtNBitsKernel(LinearKernel):
    """onnxruntime MatMulNBits, W{2,4,8} with int8 activations (see :mod:`onnx_nbits`)."""

    name = "ort-nbits"
    accuracy_level = 4

    @staticmethod
    def _bits(q) -> int | None:
        return 2 if q.kind in ("binary", "ternary") else _ORT_BITS.get(int(q.bits))

    @classmethod
    def available(cls) -> bool:
        return onnx_nbits.HAVE_ORT

    @classmethod
    def from_qtensor(cls, qt: QuantizedTensor, threads: int | None = None) -> "OrtNBitsKernel":
        if not cls.available():
            raise KernelUnsupported("onnx / onnxruntime are not installed")
        codes, scale, zp, g = _weight_parts(qt)
        q = qt.qtype
        bits = cls._bits(q)
        if bits is None:
            raise KernelUnsupported(f"no MatMulNBits width for {q.name}")
        n, k = qt.shape
        if scale.shape[1] > 1:
            if g not in (16, 32, 64, 128, 256):
                raise KernelUnsupported(f"MatMulNBits needs a power-of-two group in 16..256, got {g}")
            block = g
        else:  # one scale per row: replicate it over blocks of 128
            block = 128
            nb = math.ceil(k / block)
            scale = scale[:, :1].expand(n, nb).contiguous()
            zp = None if zp is None else zp[:, :1].expand(n, nb).contiguous()
        if q.kind in ("binary", "ternary") or q.signed:
            u = codes + 2 ** (bits - 1)  # onnxruntime's default zero point is 2**(bits-1)
            zarr = None
        else:
            u = codes
            zarr = zp.numpy().astype(np.uint8)
        self = cls()
        self.n, self.k = n, k
        self.bits = bits
        self.name = f"ort-w{bits}a8" if cls.accuracy_level else f"ort-w{bits}-fp32"
        self._sess = onnx_nbits.build_session(u.numpy().astype(np.uint8), scale.numpy(), zarr, bits, block,
                                              threads or torch.get_num_threads(), cls.accuracy_level)
        self._bytes = n * math.ceil(k / block) * (block * bits // 8 + 4 + (0 if zarr is None else 1))
        return self

    def _run(self, x):
        return torch.from_numpy(self._sess.run(None, {"x": x.numpy()})[0])

    @property
    def nbytes(self) -> int:
        return self._bytes


class OrtNBitsFp32Kernel(OrtNBitsKernel):
    """MatMulNBits with fp32 activations (accuracy_level 0): exact weight-only numerics, the 4-bit blocks
    dequantised inside the GEMM. Codes of 4 bits or fewer are stored as 4-bit blocks, the only width with
    a fast fp32 path (2-bit there: 0.2x fp32 at 4096^2 M=64, against 1.3x widened)."""

    name = "ort-nbits-fp32"
    accuracy_level = 0

    @staticmethod
    def _bits(q) -> int | None:
        return 4 if q.kind in ("binary", "ternary") or q.bits <= 4 else None


from bitladder.kernels.fp16_codes import Fp16CodesKernel  # noqa: E402
from bitladder.kernels.int4pack import Int4PackBf16Kernel  # noqa: E402
from bitladder.kernels.numba_kernels import NumbaLowbitKernel, XnorKernel  # noqa: E402
from bitladder.kernels.onednn_w8a8 import OnednnW8A8Kernel, OnednnW8A8TokenKernel  # noqa: E402

KERNELS: dict[str, type[LinearKernel]] = {
    "dequant-fp32": DequantKernel,
    "int8-w8a8-fbgemm": FbgemmW8A8Kernel,
    "int8-w8a8-fbgemm-token": FbgemmW8A8TokenKernel,
    "int8-w8a8-onednn": OnednnW8A8Kernel,
    "int8-w8a8-onednn-token": OnednnW8A8TokenKernel,
    "ort-nbits": OrtNBitsKernel,
    "ort-nbits-fp32": OrtNBitsFp32Kernel,
    "fbgemm-fp16-codes": Fp16CodesKernel,
    "torch-int4pack-bf16": Int4PackBf16Kernel,
    "numba": NumbaLowbitKernel,
    "binary-xnor": XnorKernel,
}
