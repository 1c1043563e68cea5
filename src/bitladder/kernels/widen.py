"""Float weights (bf16, fp16, fp8) to fp32 whole, for a cast per call before the fp32 GEMM or convolution.

``float(w) * scale`` in one C pass where the C kernels are built (``widen`` in ``kernels/c/bf16.h``: each value
widened exactly in registers, then one rounding, the same bits as torch on every path); torch's own cast
otherwise. Torch's fp8 -> fp32 cast is scalar on a CPU, too slow for a cast per call (notes.md, 'bf16 weights at
batch; float-format convolutions').
"""

from __future__ import annotations

import torch

from bitladder.kernels.c_lowbit import c_module, simd_path

#: the C pass's format codes (WIDE_* in kernels/c/bf16.h)
CODES = {torch.bfloat16: 0, torch.float16: 1, torch.float8_e4m3fn: 2, torch.float8_e5m2: 3}
FP8 = ("fp8_e4m3", "fp8_e5m2")


def fast(fmt: str) -> bool:
    """Whether a cast of format ``fmt`` is cheap here: the C pass is built, or torch's own cast is fast (16-bit)."""
    return c_module() is not None or fmt in ("bf16", "fp16")


def widened(values: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``values.float() * scale[:, None]`` as a new contiguous (N, K) fp32 tensor, for 2-D ``values`` in bf16,
    fp16 or fp8 (contiguous) and ``scale`` one fp32 per row, or None."""
    n, k = values.shape
    if c_module() is None or values.dtype not in CODES:
        w = values.float()
        return w if scale is None else w.mul_(scale.reshape(n, 1))
    out = torch.empty(n, k)
    raw = values.view(torch.uint8 if values.element_size() == 1 else torch.int16).numpy()
    sc = b"" if scale is None else scale.float().contiguous().numpy()
    c_module().widen(raw, out.numpy(), n, k, CODES[values.dtype], sc, simd_path(None, "avx512bw"),
                     torch.get_num_threads())
    return out
