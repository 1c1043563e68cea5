"""Linear latency: fp32 F.linear vs every bitladder kernel vs torch.ao dynamic int8.

    PYTHONPATH=src python benchmarks/bench_linear.py [--json out.json] [--sizes 1024 4096] [--batches 1 64]

All variants of one (shape, batch) case are timed interleaved in the same rounds (each round runs
every variant ``inner`` times back to back), after a warm-up; the latency is the median over rounds,
so background load hits all variants alike. ``ratio_vs_fp32`` = fp32 latency / variant latency.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
import torch.nn.functional as F

from bitladder.formats.layout import Layout
from bitladder.kernels import (
    KERNELS,
    FbgemmW8A8Kernel,
    KernelUnsupported,
    NumbaLowbitKernel,
    OrtNBitsKernel,
    XnorKernel,
    select_kernel,
)
from bitladder.tensor.quantized import QuantizedTensor

RUNGS = [  # (label, qtype, layout, kernel classes to try)
    ("int8 W8A8", "int8", Layout("channel"), [FbgemmW8A8Kernel, OrtNBitsKernel]),
    ("int8 W8", "int8", Layout("channel"), [NumbaLowbitKernel]),
    ("int4 g64", "int4", Layout("group", group=64), [OrtNBitsKernel, NumbaLowbitKernel]),
    ("int3 g64", "int3", Layout("group", group=64), [OrtNBitsKernel, NumbaLowbitKernel]),
    ("int2 g64", "int2", Layout("group", group=64), [OrtNBitsKernel, NumbaLowbitKernel]),
    ("ternary", "ternary", Layout("channel"), [OrtNBitsKernel, NumbaLowbitKernel]),
    ("binary", "binary", Layout("channel"), [XnorKernel, OrtNBitsKernel, NumbaLowbitKernel]),
]


def timed(fns: dict, rounds: int, inner: int) -> dict[str, float]:
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
    torch.manual_seed(0)
    w = torch.randn(n, k) / k**0.5
    x = torch.randn(m, k)
    fns = {"fp32 F.linear": lambda: F.linear(x, w)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = torch.nn.Linear(k, n, bias=False)
        lin.weight.data = w.clone()
        ao = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
    fns["torch.ao quantize_dynamic int8"] = lambda: ao(x)
    selected = set()
    for label, qname, layout, classes in RUNGS:
        qt = QuantizedTensor.from_float(w, qname, layout)
        pick = select_kernel(qt.qtype, qt.layout, m, n, k)
        for cls in classes:
            try:
                kern = cls.from_qtensor(qt)
            except KernelUnsupported:
                continue
            variant = f"bitladder {label} [{kern.name}]"
            fns[variant] = (lambda kern=kern: kern(x))
            if KERNELS.get(pick) is cls:
                selected.add(variant)
    flops = n * k * max(m, 1)
    inner = max(1, min(20, int(2e8 / flops)))
    with torch.no_grad():
        lat = timed(fns, rounds, inner)
    base = lat["fp32 F.linear"]
    rows = []
    for variant, ms in lat.items():
        rows.append({"case": "linear", "shape": [n, k], "batch": m, "variant": variant, "latency_ms": round(ms, 4),
                     "ratio_vs_fp32": round(base / ms, 3), "selected": variant in selected})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--json", default=None, help="write the rows to this file (JSON list)")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for size in args.sizes:
        for m in args.batches:
            case = run_case(size, size, m, args.rounds)
            rows += case
            print(f"\nLinear {size}x{size}, batch {m}")
            print(f"  {'variant':52s} {'ms':>9s} {'vs fp32':>8s}")
            for r in case:
                mark = " *" if r["selected"] else ""
                print(f"  {r['variant']:52s} {r['latency_ms']:9.3f} {r['ratio_vs_fp32']:7.2f}x{mark}")
    print("\n* = the kernel select_kernel() picks for this rung and batch")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
