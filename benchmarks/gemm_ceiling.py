"""The GEMM ceilings behind issue 3's two open limits, measured side by side in one run.

1. MiniLM's W8A8 shapes at 1504 rows: oneDNN's u8 x s8 GEMM alone (what bitladder's per-token path calls),
   fbgemm's dynamic linear (what torch.ao calls, its activation quantisation included), fp32 and bf16.
2. Linear 4096², 64 rows: fp32, dense bf16, and torch's packed-int4 GEMM with bf16 activations (what
   bitladder's int4 weight-only path calls).

    python benchmarks/gemm_ceiling.py

Paths timed in interleaved rounds (``bench_linear.timed``: median of 30 rounds after warm-up), so each
ratio compares runs under the same load; GMAC/s = rows x N x K / time.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import bitladder
from bitladder.kernels.int4pack import Int4PackBf16Kernel
from bitladder.kernels.onednn_w8a8 import _raw
from bitladder.pipeline.bench.linear import timed


def int8_shapes(rows: int = 1504) -> None:
    print(f"W8A8 at {rows} rows: ms (GMAC/s)")
    for n, k in ((384, 384), (1536, 384), (384, 1536)):
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        ws, wz, b = torch.rand(n) * 0.01, torch.zeros(n, dtype=torch.int32), torch.randn(n)
        x = torch.randn(rows, k)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onednn = torch.ops.onednn.qlinear_prepack(w, None)
            q = _raw(torch.quantize_per_tensor(x, 0.02, 128, torch.quint8))
            wq = torch._make_per_channel_quantized_tensor(w, ws.double(), torch.zeros(n, dtype=torch.long), 0)
            fbgemm = torch.ops.quantized.linear_prepack(wq, b)
        wf = torch.randn(n, k)
        xb, wb, bb = x.bfloat16(), wf.bfloat16(), b.bfloat16()
        paths = {
            "oneDNN int8 GEMM": lambda: torch.ops.onednn.qlinear_pointwise(
                q, 0.02, 128, onednn, ws, wz, b, 1.0, 0, torch.float32, "none", [], ""),
            "fbgemm dynamic (quantises x)": lambda: torch.ops.quantized.linear_dynamic(x, fbgemm, False),
            "fp32": lambda: nn.functional.linear(x, wf, b),
            "bf16": lambda: nn.functional.linear(xb, wb, bb),
        }
        macs = rows * n * k / 1e9
        cells = [f"{name} {ms:.2f} ({macs / ms * 1e3:.0f})" for name, ms in timed(paths, 30, 1).items()]
        print(f"  {n}x{k}: " + "; ".join(cells))


def int4_batch(rows: int = 64, size: int = 4096) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(size, size)
    qt = bitladder.quantize(nn.Sequential(lin), bitladder.Int(4, group=64))[0].qweight
    kernel = Int4PackBf16Kernel.from_qtensor(qt)
    x = torch.randn(rows, size)
    w, xb, wb = lin.weight.detach(), x.bfloat16(), lin.weight.detach().bfloat16()
    lat = timed({"fp32": lambda: nn.functional.linear(x, w), "bf16": lambda: nn.functional.linear(xb, wb),
                 "int4": lambda: kernel(x)}, 30, 1)
    fp32, bf16, int4 = lat["fp32"], lat["bf16"], lat["int4"]
    print(f"Linear {size}², {rows} rows: fp32 {fp32:.2f} ms; dense bf16 {bf16:.2f} ms ({fp32 / bf16:.2f}x); "
          f"packed int4, bf16 activations {int4:.2f} ms ({fp32 / int4:.2f}x)")


if __name__ == "__main__":
    with torch.inference_mode():
        int8_shapes()
        int4_batch()
