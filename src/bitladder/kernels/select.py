"""Pick the fastest kernel for a Linear weight from (qtype, layout, M, N, K).

Rules from ``benchmarks/bench_linear.py`` on a 2-core Xeon (Emerald Rapids, AVX-512 VNNI), torch 2.13,
onnxruntime 1.31, numba 0.68; ratio = fp32 ``F.linear`` latency / kernel latency, same run
(the machine was shared, so these are one noisy run, not a law; see the report in the commit log):

=========================  ===========  ==========  ==========  ==========  =========================
weight                     1024² M=1    1024² M=64  4096² M=1   4096² M=64  pick
=========================  ===========  ==========  ==========  ==========  =========================
int8 per-channel, W8A8     fbgemm 7.9x  fbgemm 3.9x fbgemm 4.6x fbgemm 3.5x int8-w8a8-fbgemm (any M)
int8 weight-only           numba 0.1x*  numba 0.1x* numba 0.2x* numba 0.1x* (slower than ort-w8a8)
int4 g64                   ort 6.0x     ort 0.25x   ort 3.6x    ort 1.2x    ort-nbits (any M)
int3 g64 (as 4-bit)        ort 1.6x     ort 0.7x    ort 3.6x    ort 1.2x    same
int2 g64                   ort 5.8x     ort 0.2x    ort 3.7x    ort 1.1x    same
ternary (as 2-bit)         ort 1.8x     ort 0.4x    ort 4.3x    ort 1.7x    same
binary, weight-only        ort 7.1x     ort 0.3x    ort 5.0x    ort 1.4x    same
binary x binary act.       xnor 8.5x    xnor 0.3x   xnor 10.4x  xnor 1.2x   binary-xnor (opt-in)
=========================  ===========  ==========  ==========  ==========  =========================

(*) numba with its OpenMP layer fighting torch's; with the workqueue layer (now the default here)
the numba GEMV is 2-4x faster than fp32 at 4096² M=1 but still 2x behind onnxruntime, and its
tile-dequant + BLAS path for M>=4 is 0.5x fp32 at 1024² M=64 and 0.1x at 4096² M=64 (numba's and
torch's thread pools alternate per tile). So: onnxruntime wherever MatMulNBits takes the group
size, numba where it does not (groups that are multiples of 8), ``dequant-fp32`` otherwise.
Batched small layers (1024² M=64) lose to fp32 with every low-bit kernel except fbgemm int8.
"""

from __future__ import annotations

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QType, get_qtype

ORT_GROUPS = (16, 32, 64, 128, 256)


def _groups(layout: Layout, k: int) -> int | None:
    """Group length along K, or None for one scale per row (channel / tensor / a group >= K)."""
    if layout.granularity != "group" or layout.group >= k:
        return None
    return layout.group


def select_kernel(qtype: QType | str, layout: Layout, m: int, n: int, k: int,
                  binary_activations: bool = False) -> str:
    """Name (a key of ``KERNELS``) of the kernel to use; ``"dequant-fp32"`` when none applies.

    ``binary_activations`` opts binary weights into XNOR-popcount, which also binarises ``x``
    (XNOR-Net); without it every kernel keeps the weight-only meaning up to activation rounding.
    """
    from bitladder.kernels.linear import FbgemmW8A8Kernel, NumbaLowbitKernel, OrtNBitsKernel, XnorKernel

    q = get_qtype(qtype) if isinstance(qtype, str) else qtype
    if q.kind in ("float", "codebook") or (layout.granularity != "tensor" and layout.axis % 2 != 0):
        return "dequant-fp32"
    g = _groups(layout, k)
    if q.kind == "binary" and binary_activations and XnorKernel.available() and (g is None or g % 64 == 0):
        return "binary-xnor"
    if q.name == "int8" and g is None and FbgemmW8A8Kernel.available():
        return "int8-w8a8-fbgemm"
    ort_ok = OrtNBitsKernel.available() and (g is None or g in ORT_GROUPS)
    numba_ok = NumbaLowbitKernel.available() and (g is None or g % 8 == 0)
    if ort_ok:
        return "ort-nbits"
    return "numba" if numba_ok else "dequant-fp32"


#: kernel policies a config may name (``Int(..., kernel=...)``); "auto" applies :func:`choose`
POLICIES = ("auto", "dequant-fp32", "int8-w8a8", "int8-w8a8-token", "int8-w8a8-fbgemm", "int8-w8a8-fbgemm-token",
            "int8-w8a8-onednn", "int8-w8a8-onednn-token", "ort-nbits", "ort-nbits-fp32", "fbgemm-fp16-codes",
            "torch-int4pack-bf16", "numba", "binary-xnor")
# Dynamic W8A8 ("int8-w8a8[-token]", what ``Act(dynamic=...)`` sets) picks its integer GEMM by rows: fbgemm's
# below ONEDNN_MIN_ROWS, oneDNN's from there on. oneDNN / fbgemm latency, 2-core EPYC (VNNI), 2 threads, per
# tensor (per token within +-0.1): 1024^2 M=16 1.45, M=128 0.99, M=512 0.96; 4096^2 M=16 1.15, M=256 0.93,
# M=512 0.87, M=1504 0.84; 384x1536 M=16 1.69, M=512 1.01; 1536x384 M=256 0.91, M=1504 0.84. MiniLM per token
# + SmoothQuant (1504 rows): 121.8 ms against 136.0 on fbgemm alone in the first run; once q/k/v shared their
# quantised input, 2-5 % in three runs and a tie in the last bench (the host was noisy).
ONEDNN_MIN_ROWS = 256
# Above 16 rows auto keeps float activations rather than running MatMulNBits with int8 activations,
# which cost MiniLM's int8 weight-only rung 0.9995 -> 0.998 mean cosine (:func:`_float_activations`): the codes as fp16
# weights in fbgemm where each output channel has one scale (see ``fp16_codes``; 1.16-1.67x fp32 at
# M=64..1504), group-scaled 4-bit-or-narrower codes on torch's packed-int4 GEMM with bf16 activations where
# it applies (see ``int4pack``: faster than the two paths below at every batch measured inside a model),
# else up to 512 rows MatMulNBits with fp32 activations for 4 bits and fewer
# (``ort-nbits-fp32``, codes widened to 4-bit blocks), else dequantise + fp32 GEMM. Measured on a 2-core
# EPYC, 2 threads, int4 g64, inside a model (Linear, GELU, LayerNorm x4: torch's and onnxruntime's thread
# pools take turns), ratio to fp32 (fp32-activation
# MatMulNBits / dequant-fp32 / int8-activation MatMulNBits): 4096^2 M=64 1.22 / 0.21 / 1.88; M=512 1.11 /
# 0.63 / 1.71; 1024^2 M=64 0.52 / 0.44 / 1.13; M=1504 0.71 / 0.91 / 0.97; 384^2 M=1504 0.65 / 0.85 / 0.60.
# Alone (no torch ops between calls) the fp32-activation path is faster still (4096^2 M=64 1.34-1.42,
# 384x1536 M=4096 1.37). int8 weights have no fast fp32 MatMulNBits path (0.08x at M=1, 0.47x at M=64) and
# dequantise. ``kernel="ort-nbits"`` stays the choice for batched throughput where W4A8-style numerics are
# acceptable.
ORT_MAX_ROWS = 16
ORT_FP32_MAX_ROWS = 512
NUMBA_MAX_ROWS = 1  # the numba GEMV; its tiled path for M > 1 is slower than fp32


def choose(qt, m: int, policy: str = "auto") -> str:
    """The kernel for this weight at ``m`` rows under ``policy`` (auto: fastest measured, else fallback)."""
    if policy in ("int8-w8a8", "int8-w8a8-token"):
        from bitladder.kernels.onednn_w8a8 import OnednnW8A8Kernel

        backend = "onednn" if m >= ONEDNN_MIN_ROWS and OnednnW8A8Kernel.available() else "fbgemm"
        return policy.replace("w8a8", f"w8a8-{backend}")
    if policy != "auto":
        return policy
    if qt.zero_point is not None and qt.zero_point.is_floating_point():
        return "dequant-fp32"  # fractional zero points (HQQ) have no integer kernel here
    name = select_kernel(qt.qtype, qt.layout, m, *qt.shape)
    if name == "int8-w8a8-fbgemm":
        # fbgemm's dynamic activation scale is one per call (7-bit with reduce_range): MiniLM keeps
        # a mean cosine of only 0.974 through it. onnxruntime quantises activations per row and block.
        from bitladder.kernels.linear import OrtNBitsKernel

        name = "ort-nbits" if OrtNBitsKernel.available() else "dequant-fp32"
    batched = (name == "ort-nbits" and m > ORT_MAX_ROWS) or (name == "numba" and m > NUMBA_MAX_ROWS)
    if batched or name == "dequant-fp32":
        return _float_activations(qt, m)
    return name


def _float_activations(qt, m: int) -> str:
    """The fastest weight-only path for ``m`` rows that keeps float activations: fp16-packed codes where
    each output channel has one scale (exact); group-scaled codes of 4 bits or fewer on torch's packed-int4
    GEMM where the CPU has bf16 dot products (bf16 activations: 0.3 % output rounding); else MatMulNBits'
    fp32 path for them up to 512 rows (exact); else dequantise + fp32 GEMM."""
    from bitladder.kernels.linear import Fp16CodesKernel, Int4PackBf16Kernel, OrtNBitsFp32Kernel

    if Fp16CodesKernel.applies(qt):
        return "fbgemm-fp16-codes"
    if Int4PackBf16Kernel.applies(qt):
        return "torch-int4pack-bf16"
    g = _groups(qt.layout, qt.shape[1])
    if (m > ORT_MAX_ROWS and m <= ORT_FP32_MAX_ROWS and OrtNBitsFp32Kernel.available()
            and OrtNBitsFp32Kernel._bits(qt.qtype) and (g is None or g in ORT_GROUPS)):
        return "ort-nbits-fp32"
    return "dequant-fp32"


def build_kernel(qt, m: int = 1, binary_activations: bool = False):
    """Build the kernel ``select_kernel`` picks for this weight and batch size."""
    from bitladder.kernels.linear import KERNELS

    name = select_kernel(qt.qtype, qt.layout, m, *qt.shape, binary_activations=binary_activations)
    return KERNELS[name].from_qtensor(qt)
