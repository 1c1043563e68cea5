"""The limits a bench row is judged against, measured on this machine in a few seconds, and each row's
fraction of its limit.

* ``read_gbps``: streaming read bandwidth, a float32 sum over a 512 MiB buffer (far past any L3 cache),
  best of five, at the current thread count. A sum does one add per 4 bytes read and writes nothing, so
  it is bound by the reads (one thread gives about what two give on the 2-core EPYC). The buffer is
  written before it is read: untouched pages all map the kernel's one zero page and would read from cache.
* ``fp32_gflops``: a 2048 x 2048 product, best of three after a warm-up, 2 N^3 operations, on every installed
  fp32 GEMM engine (:mod:`bitladder.kernels.fp32_gemm`), the fastest kept: off Intel, torch's own (MKL)
  runs a generic path that is not the machine's limit.
* ``int8_gops``: the faster of fbgemm's and oneDNN's int8 GEMMs (on a uint8 input and prepacked int8 weight,
  the GEMMs the W8A8 kernels call; oneDNN's runs AMX where the CPU has it), 2048^3, best of three;
  ``torch._int_mm`` only where both are missing (its CPU path is a slow reference loop: docs/DESIGN.md,
  'Results schema').

* ``llc_bytes``: the last-level cache's size (Linux sysfs; 64 MiB where it cannot be read), which the
  Linear bench's streamed batch-1 timing must exceed; ``available_bytes``: the memory its copies may take.

* ``read_probe``: the same float32 sum over a buffer of twice the last-level cache, as a callable the Linear
  bench times in its streamed rounds beside the kernels (``stream_read_gbps``): this VM's read bandwidth
  moved from 39 to 65 GB/s within seconds, so a bandwidth taken once before the rows is not the bandwidth
  the rows saw.

``limit_fraction`` of a row (see :func:`limit_fraction`): at batch 1, a row with ``weight_bytes`` (a
Linear kernel: codes and scales it must read) gets weight bytes / latency / read bandwidth, the latency
being ``stream_latency_ms`` where the row has it (weights streamed from memory, not re-read from the
cache: :mod:`bitladder.pipeline.bench.linear`) and the bandwidth then ``stream_read_gbps`` (the probe's
fastest of the same rounds, as ``read_gbps`` is the best of five: its median fell to 20 GB/s in one run
whose kernels streamed 35), else ``read_gbps``; at batch >= 2,
and for rows with only ``ops`` (convolutions, whose weights are reused across positions, so compute
bounds them even at batch 1), ``ops`` (2 x MACs) / latency / peak: the int8 peak where the variant's dot
products are integer (:func:`integer_compute`: W8A8 and ort-wNa8 kernels, bitladder's C kernels, torch.ao /
onnxruntime dynamic int8, XNOR, and ``int8-onednn-split``, whose three activation pieces count three times the
layer's operations), the fp32 peak otherwise (kernels that widen codes to float). Whole-model rows (MiniLM, digits)
get None.
"""

from __future__ import annotations

import glob
import math
import os
import re
import time
import warnings
from collections.abc import Callable

import torch

from bitladder.kernels import fp32_gemm

READ_BYTES = 512 << 20
GEMM_N = 2048
LLC_FALLBACK = 64 << 20

# activations quantised to integers: W8A8 / ort-wNa8 kernels, bitladder's C kernels (int8 per block), torch.ao or
# onnxruntime dynamic int8, XNOR; and float activations as integer pieces (int8-onednn-split)
_INTEGER = re.compile(r"w\d+a8|\[c-(lowbit|2bit|binary)|xnor|quantize_dynamic|dynamic int8|onednn-split")
# integer operations per operation of the layer: the split kernel multiplies three pieces of each input row
_WORK = {"[int8-onednn-split]": 3}


def _best(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, in seconds."""
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def read_gbps(nbytes: int = READ_BYTES, repeats: int = 5) -> float:
    """Streaming read bandwidth in GB/s (1e9 bytes per second)."""
    x = torch.ones(nbytes // 4, dtype=torch.float32)  # written, so every page is real memory
    x.sum()
    return nbytes / _best(x.sum, repeats) / 1e9


def read_probe(nbytes: int) -> Callable[[], object]:
    """A call that reads ``nbytes`` once (the :func:`read_gbps` sum over a written buffer), to time among
    other calls."""
    x = torch.ones(max(nbytes, 4) // 4, dtype=torch.float32)
    return x.sum


def llc_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size in bytes of the largest cache level of CPU 0 (``LLC_FALLBACK`` where sysfs does not say)."""
    best = 0
    for path in glob.glob(f"{root}/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * unit)
    return best or LLC_FALLBACK


def available_bytes(path: str = "/proc/meminfo") -> int:
    """Memory available to new allocations: ``MemAvailable`` (Linux), else the free physical pages."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return LLC_FALLBACK * 64


def fp32_gflops(n: int = GEMM_N, repeats: int = 3) -> float:
    """fp32 GEMM throughput in GFLOP/s: the best of ``repeats`` ``n`` x ``n`` products on the fastest engine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = math.inf
    for name in fp32_gemm.installed():
        fn = fp32_gemm.ENGINES[name]
        fn(a, b, None)
        best = min(best, _best(lambda: fn(a, b, None), repeats))
    return 2 * n**3 / best / 1e9


def _int8_engines(n: int) -> list[Callable[[], object]]:
    """One ``n`` x ``n`` u8 x s8 GEMM per installed integer engine: fbgemm's (``quantized.linear``) and oneDNN's
    (``onednn.qlinear_pointwise``, which runs AMX where the CPU has it); ``torch._int_mm`` only where neither is."""
    fns = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = torch.quantize_per_tensor(torch.randn(n, n), 0.02, 0, torch.qint8)
        x = torch.quantize_per_tensor(torch.randn(n, n), 0.02, 128, torch.quint8)
        try:
            packed = torch.ops.quantized.linear_prepack(w, None)
            fns.append(lambda: torch.ops.quantized.linear(x, packed, 1.0, 0))
        except (RuntimeError, AttributeError):
            pass
        try:
            codes, ones = w.int_repr(), torch.ones(n)
            dnn = torch.ops.onednn.qlinear_prepack(codes, None)
            zeros, u8 = torch.zeros(n, dtype=torch.int32), x.int_repr()
            fns.append(lambda: torch.ops.onednn.qlinear_pointwise(u8, 1.0, 128, dnn, ones, zeros, None, 1.0, 0,
                                                                  torch.float32, "none", [], ""))
        except (RuntimeError, AttributeError):
            pass
    if not fns and hasattr(torch, "_int_mm"):
        a = torch.randint(-127, 128, (n, n), dtype=torch.int8)
        fns.append(lambda: torch._int_mm(a, a))
    return fns


def int8_gops(n: int = GEMM_N, repeats: int = 3) -> float | None:
    """int8 x int8 -> int32 GEMM operations per second / 1e9 on the fastest integer engine (as ``fp32_gflops``
    takes the fastest float one: with AMX oneDNN's is several times fbgemm's); None where torch has none."""
    best = math.inf
    for fn in _int8_engines(n):
        fn()
        best = min(best, _best(fn, repeats))
    return None if best == math.inf else 2 * n**3 / best / 1e9


def measure() -> dict[str, float | None]:
    """The three measured limits, in a few seconds, and the cache size (docs/DESIGN.md, 'Results schema')."""
    with torch.no_grad():
        return {"read_gbps": read_gbps(), "fp32_gflops": fp32_gflops(), "int8_gops": int8_gops(),
                "llc_bytes": llc_bytes()}


def fraction(amount: float, latency_ms: float, rate_g: float) -> float:
    """``amount`` (bytes or operations) per second at ``latency_ms``, over ``rate_g`` (GB/s or GOP/s)."""
    return amount / (latency_ms * 1e-3) / (rate_g * 1e9)


def integer_compute(variant: str) -> bool:
    """Whether a bench variant's dot products are integer (so the int8 peak is its limit)."""
    return bool(_INTEGER.search(variant.lower()))


def limit_fraction(row: dict, limits: dict) -> float | None:
    """The row's fraction of its limit (module docstring); None where the row lacks what it needs."""
    ms = row.get("latency_ms")
    if not ms or row.get("error"):
        return None
    if row.get("batch") == 1 and "weight_bytes" in row:  # weight-bound: bytes over bandwidth
        streamed = row.get("stream_latency_ms")
        gbps = row.get("stream_read_gbps") if streamed else None
        gbps = gbps or limits.get("read_gbps")
        ok = row["weight_bytes"] and gbps
        return round(fraction(row["weight_bytes"], streamed or ms, gbps), 4) if ok else None
    peak = limits.get("int8_gops") if integer_compute(row.get("variant", "")) else limits.get("fp32_gflops")
    if row.get("ops") and peak:
        work = next((w for tag, w in _WORK.items() if tag in row.get("variant", "")), 1)
        return round(fraction(row["ops"] * work, ms, peak), 4)
    return None


def annotate(rows: list[dict], limits: dict) -> list[dict]:
    """Set ``limit_fraction`` on every row (None where it does not apply, e.g. whole-model rows)."""
    for r in rows:
        r["limit_fraction"] = limit_fraction(r, limits)
    return rows
