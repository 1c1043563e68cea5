"""Conv2d latency: fp32 ``nn.Conv2d`` against the same layer quantised to dynamic W8A8 by bitladder, and the
built-in digits CNN whole.

    bitladder bench --suite conv [--json out.json]

Timed like the Linear suite (:func:`bitladder.pipeline.bench.linear.timed`: interleaved rounds, median).
torch.ao's dynamic quantisation has no convolution, so there is no peer row. The variant names the kernel
the quantised layer actually ran; a grouped convolution keeps the float path and is listed to show it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

import bitladder
from bitladder import Act, Int
from bitladder.pipeline.bench.linear import latency_row, timed

W8A8 = Int(8, act=Act(dynamic="tensor"))

#: (batch, in, out, size, kernel, stride, groups)
CASES = [(1, 64, 64, 56, 3, 1, 1), (8, 64, 64, 56, 3, 1, 1), (1, 3, 64, 224, 7, 2, 1), (8, 128, 256, 28, 3, 2, 1),
         (450, 16, 32, 8, 3, 1, 1), (8, 64, 64, 56, 3, 1, 64)]


def _rows(case: str, shape: list, batch: int, fns: dict, rounds: int, inner: int,
          macs: int | None = None) -> list[dict]:
    with torch.inference_mode():
        lat = timed(fns, rounds, inner)
    base = next(iter(lat.values()))
    extra = {} if macs is None else {"ops": 2 * macs}  # what limit_fraction divides by the peak
    return [{**latency_row(case, shape, batch, v, ms, base), **extra} for v, ms in lat.items()]


def conv_rows(rounds: int = 15) -> Iterator[dict]:
    """Bench rows: fp32 ``nn.Conv2d`` against dynamic W8A8 for each of ``CASES``, then the digits CNN whole."""
    for n, c, o, size, k, stride, groups in CASES:
        torch.manual_seed(0)
        conv = nn.Conv2d(c, o, k, stride, k // 2, groups=groups).eval()
        q = bitladder.quantize(conv, W8A8)
        x = torch.randn(n, c, size, size)
        with torch.inference_mode():
            q(x)
        flops = n * o * (c // groups) * k * k * (size // stride) ** 2
        yield from _rows("conv", [o, c // groups, k, k], n, {"fp32 nn.Conv2d": lambda: conv(x),
                                                              f"bitladder int8 W8A8 [{q.kernel}]": lambda: q(x)},
                         rounds, max(1, min(20, int(2e8 / flops))), macs=flops)
    from bitladder.zoo import digits

    spec = digits.spec()
    q = bitladder.quantize(spec.model, W8A8)
    x = torch.cat(spec.eval_batches)
    with torch.inference_mode():
        q(x)  # the kernels are picked on the first call
    kernels = sorted({m.kernel for m in q.modules() if hasattr(m, "qweight")})
    yield from _rows("digits", [], len(x), {"fp32": lambda: spec.model(x),
                                            f"bitladder W8A8 dynamic [{', '.join(kernels)}]": lambda: q(x)}, rounds, 5)
