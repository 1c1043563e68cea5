"""Linear latency: fp32 F.linear vs every bitladder kernel vs torch.ao dynamic int8.

    bitladder bench --suite linear [--json out.json]      (or python benchmarks/bench_linear.py)

All variants of one (shape, batch) case are timed interleaved in the same rounds (each round runs
every variant ``inner`` times back to back), after a warm-up; the latency is the median over rounds,
so background load hits all variants alike. ``ratio_vs_fp32`` = fp32 latency / variant latency.
Each row also carries ``weight_bytes`` (what the kernel holds and must read: codes and scales; fp32 N*K*4)
and ``ops`` (2*M*N*K), from which ``bitladder bench`` computes ``limit_fraction``
(:mod:`bitladder.pipeline.bench.limits`).
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F

from bitladder.formats.layout import Layout
from bitladder.kernels import (
    KERNELS,
    FbgemmW8A8Kernel,
    FbgemmW8A8TokenKernel,
    Fp16CodesKernel,
    Int4PackBf16Kernel,
    KernelUnsupported,
    NumbaLowbitKernel,
    OnednnW8A8Kernel,
    OnednnW8A8TokenKernel,
    OrtNBitsFp32Kernel,
    OrtNBitsKernel,
    XnorKernel,
)
from bitladder.kernels.select import choose
from bitladder.tensor.quantized import QuantizedTensor

RUNGS = [  # (label, qtype, layout, kernel classes to try, the policy a quantised layer of this rung has)
    ("int8 W8A8", "int8", Layout("channel"), [FbgemmW8A8TokenKernel, OnednnW8A8TokenKernel, FbgemmW8A8Kernel,
                                               OnednnW8A8Kernel, OrtNBitsKernel], "int8-w8a8-token"),
    ("int8 W8", "int8", Layout("channel"), [OrtNBitsKernel, Fp16CodesKernel, NumbaLowbitKernel], "auto"),
    ("int4 g64", "int4", Layout("group", group=64), [OrtNBitsKernel, OrtNBitsFp32Kernel, Int4PackBf16Kernel,
                                                      NumbaLowbitKernel], "auto"),
    ("int3 g64", "int3", Layout("group", group=64), [OrtNBitsKernel, OrtNBitsFp32Kernel, Int4PackBf16Kernel,
                                                      NumbaLowbitKernel], "auto"),
    ("int2 g64", "int2", Layout("group", group=64), [OrtNBitsKernel, OrtNBitsFp32Kernel, Int4PackBf16Kernel,
                                                      NumbaLowbitKernel], "auto"),
    ("ternary", "ternary", Layout("channel"), [OrtNBitsKernel, Fp16CodesKernel, NumbaLowbitKernel], "auto"),
    ("binary", "binary", Layout("channel"), [XnorKernel, OrtNBitsKernel, Fp16CodesKernel, NumbaLowbitKernel],
     "auto"),
]


def timed(fns: dict, rounds: int, inner: int) -> dict[str, float]:
    """Median latency in ms per function, timed in interleaved rounds of ``inner`` calls after a warm-up."""
    for f in fns.values():  # warm-up (and numba compile / cache load)
        for _ in range(3):
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t) / inner)
    return {k: sorted(v)[len(v) // 2] * 1e3 for k, v in samples.items()}


def run_case(n: int, k: int, m: int, rounds: int) -> list[dict]:
    """Bench rows for one (n, k) weight at batch ``m``: fp32, torch.ao int8 and every kernel of each rung."""
    torch.manual_seed(0)
    w = torch.randn(n, k) / k**0.5
    x = torch.randn(m, k)
    fns = {"fp32 F.linear": lambda: F.linear(x, w)}
    wbytes = {"fp32 F.linear": n * k * 4, "torch.ao quantize_dynamic int8": n * k + 8}  # + one scale, zero point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = torch.nn.Linear(k, n, bias=False)
        lin.weight.data = w.clone()
        ao = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    fns["torch.ao quantize_dynamic int8"] = lambda: ao(x)
    selected = set()
    for label, qname, layout, classes, policy in RUNGS:
        qt = QuantizedTensor.from_float(w, qname, layout)
        pick = choose(qt, m, policy)  # what a QuantLinear of this rung runs for this batch
        for cls in classes:
            try:
                kern = cls.from_qtensor(qt)
            except KernelUnsupported:
                continue
            variant = f"bitladder {label} [{kern.name}]"
            fns[variant] = (lambda kern=kern: kern(x))
            wbytes[variant] = kern.nbytes or None  # a kernel that does not count its bytes
            if KERNELS.get(pick) is cls:
                selected.add(variant)
        if pick == "dequant-fp32":
            dq = KERNELS["dequant-fp32"].from_qtensor(qt)
            variant = f"bitladder {label} [dequant-fp32]"
            fns[variant] = (lambda dq=dq: dq(x))
            wbytes[variant] = dq.nbytes or None
            selected.add(variant)
    flops = n * k * max(m, 1)
    inner = max(1, min(20, int(2e8 / flops)))
    with torch.no_grad():
        lat = timed(fns, rounds, inner)
    base = lat["fp32 F.linear"]
    return [{**latency_row("linear", [n, k], m, variant, ms, base), "selected": variant in selected,
             "weight_bytes": wbytes[variant], "ops": 2 * n * k * m} for variant, ms in lat.items()]


def latency_row(case: str, shape: list, batch: int, variant: str, ms: float, base_ms: float) -> dict:
    """One bench row (schema bitladder.bench/1) of a kernel timed without a fidelity check."""
    return {"case": case, "shape": shape, "batch": batch, "variant": variant, "latency_ms": round(ms, 4),
            "ratio_vs_fp32": round(base_ms / ms, 3), "peak_rss_mb": None, "cos_mean": None, "cos_min": None,
            "knn10": None}


def linear_rows(sizes=(1024, 4096), batches=(1, 64), rounds: int = 25) -> list[dict]:
    """Bench rows of :func:`run_case` for a square weight of each size at each batch."""
    return [r for n in sizes for m in batches for r in run_case(n, n, m, rounds)]
