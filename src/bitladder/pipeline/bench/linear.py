"""Linear latency: fp32 F.linear vs every bitladder kernel vs torch.ao dynamic int8.

    bitladder bench --suite linear [--json out.json]      (or python benchmarks/bench_linear.py)

All variants of one (shape, batch) case are timed interleaved in the same rounds (each round runs
every variant ``inner`` times back to back), after a warm-up; the latency is the median over rounds,
so background load hits all variants alike. ``ratio_vs_fp32`` = fp32 latency / variant latency, and where
torch has oneDNN, ``ratio_vs_fp32_onednn`` the same against fp32 on oneDNN's GEMM (the engine bitladder's
dequantising kernels take off Intel: :mod:`bitladder.kernels.fp32_gemm`).
Each row also carries ``weight_bytes`` (what the kernel holds and must read: codes and scales; fp32 N*K*4)
and ``ops`` (2*M*N*K), from which ``bitladder bench`` computes ``limit_fraction``
(:mod:`bitladder.pipeline.bench.limits`).

At batch 1 a weight smaller than the last-level cache is read from the cache after the first call, so
``latency_ms`` there is not bound by memory. Batch-1 rows also carry ``stream_latency_ms``: the latency per
call while calling, round-robin, enough copies of the variant that their weights together exceed twice the
last-level cache (a model whose layers do not fit in the cache), and ``stream_ratio_vs_fp32``; the
bandwidth limit fraction is computed from it, against ``stream_read_gbps``: a read of twice the cache timed
as one more variant of the same rounds, its fastest round (:func:`bitladder.pipeline.bench.limits.read_probe`).
``paired_limit_fraction`` pairs the two round by round instead (:func:`paired_fraction`): the median of the
variant's read rate over the probe's in the same round.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from bitladder.formats.layout import Layout
from bitladder.kernels import (
    KERNELS,
    Bf16Fp16Kernel,
    Bf16Kernel,
    CBinaryLutKernel,
    CLowbitKernel,
    CTilesKernel,
    CTwoBitLutKernel,
    FbgemmW8A8Kernel,
    FbgemmW8A8TokenKernel,
    Fp16CodesKernel,
    Int4PackBf16Kernel,
    KernelUnsupported,
    NumbaLowbitKernel,
    OnednnSplitKernel,
    OnednnW8A8Kernel,
    OnednnW8A8TokenKernel,
    OrtNBitsFp32Kernel,
    OrtNBitsKernel,
    XnorKernel,
    fp32_gemm,
)
from bitladder.kernels.select import choose
from bitladder.pipeline.bench.limits import available_bytes, llc_bytes, read_probe
from bitladder.pipeline.bench.peers import torch_ao_unavailable
from bitladder.tensor.quantized import QuantizedTensor

LOWBIT = [CTilesKernel, CLowbitKernel, OrtNBitsKernel, OrtNBitsFp32Kernel, Int4PackBf16Kernel, NumbaLowbitKernel]
RUNGS = [  # (label, qtype, layout, kernel classes to try, the policy a quantised layer of this rung has)
    ("int8 W8A8", "int8", Layout("channel"), [FbgemmW8A8TokenKernel, OnednnW8A8TokenKernel, FbgemmW8A8Kernel,
                                               OnednnW8A8Kernel, OrtNBitsKernel, CLowbitKernel], "int8-w8a8-token"),
    ("int8 W8", "int8", Layout("channel"), [CLowbitKernel, OrtNBitsKernel, OnednnSplitKernel, Fp16CodesKernel,
                                            NumbaLowbitKernel],
     "auto"),
    ("int4 g64", "int4", Layout("group", group=64), LOWBIT, "auto"),
    ("int3 g64", "int3", Layout("group", group=64), LOWBIT, "auto"),
    ("int2 g64", "int2", Layout("group", group=64), [CTwoBitLutKernel, *LOWBIT], "auto"),
    ("ternary", "ternary", Layout("channel"), [CTwoBitLutKernel, CTilesKernel, CLowbitKernel, OrtNBitsKernel,
                                               Fp16CodesKernel, NumbaLowbitKernel], "auto"),
    ("binary", "binary", Layout("channel"), [XnorKernel, CBinaryLutKernel, CTilesKernel, CLowbitKernel,
                                             OrtNBitsKernel, Fp16CodesKernel, NumbaLowbitKernel], "auto"),
    ("bf16", "bf16", Layout("tensor"), [Bf16Kernel, Bf16Fp16Kernel], "auto"),  # half fp32's bytes, fp32's arithmetic
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


def _variants(w: torch.Tensor, m: int) -> tuple[dict[str, Callable], dict[str, Callable[[], Callable]], dict, set]:
    """Per variant: one built callable, a factory of more copies (each with its own weight), its weight
    bytes; and the variants a QuantLinear of each rung would run at ``m`` rows."""
    n, k = w.shape

    def ao():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lin = torch.nn.Linear(k, n, bias=False)
            lin.weight.data = w.clone()
            return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                          dtype=torch.qint8)

    makers = {"fp32 F.linear": lambda: (lambda x, w=w.clone(): F.linear(x, w))}
    wbytes = {"fp32 F.linear": n * k * 4}
    if torch_ao_unavailable() is None:
        makers[TORCH_AO], wbytes[TORCH_AO] = ao, n * k + 8  # + one scale, zero point
    if fp32_gemm.onednn_installed():  # the engine reference: off Intel, torch's F.linear is MKL's generic path
        makers[FP32_ONEDNN] = lambda: (lambda x, w=w.clone(): fp32_gemm.linear(x, w, None, "onednn"))
        wbytes[FP32_ONEDNN] = n * k * 4
    built = {v: make() for v, make in makers.items()}
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
            built[variant] = kern
            makers[variant] = (lambda cls=cls, qt=qt: cls.from_qtensor(qt))
            wbytes[variant] = kern.nbytes or None  # a kernel that does not count its bytes
            if KERNELS.get(pick) is cls:
                selected.add(variant)
        if pick == "dequant-fp32":
            variant = f"bitladder {label} [dequant-fp32]"
            dq = KERNELS["dequant-fp32"]
            makers[variant] = (lambda dq=dq, qt=qt: dq.from_qtensor(qt))
            built[variant] = dq.from_qtensor(qt)
            wbytes[variant] = built[variant].nbytes or None
            selected.add(variant)
    return built, makers, wbytes, selected


def copies_for(weight_bytes: int | None, working_set: int, cap: int = 64) -> int:
    """How many copies of a weight make a working set of at least ``working_set`` bytes (1 to ``cap``)."""
    if not weight_bytes:
        return 1
    return max(1, min(cap, math.ceil(working_set / weight_bytes)))


def working_set(cache: int, available: int, variants: int) -> int:
    """Bytes each of ``variants`` cycles through: twice the ``cache``, unless all their copies (alive at once)
    would then take more than a quarter of the ``available`` memory (a server's L3 of hundreds of MiB would ask
    tens of GiB of them)."""
    return max(1, min(2 * cache, available // 4 // max(variants, 1)))


def streamed_rounds(fns: dict[str, list[Callable]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each variant while it cycles through its copies, one sample per interleaved round (one
    round calls every copy of every variant once), after one warm-up pass."""
    for copies in fns.values():
        for f in copies:
            f()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, copies in fns.items():
            t = time.perf_counter()
            for f in copies:
                f()
            samples[name].append((time.perf_counter() - t) / len(copies))
    return samples


def paired_fraction(nbytes: int, seconds: list[float], probe_bytes: int, probe_seconds: list[float]) -> float:
    """Median over rounds of a variant's read rate (``nbytes`` per call) over the probe's rate in the same round:
    the bandwidth each round's calls saw, so a slower or faster spell of the machine cancels out."""
    per_round = sorted(nbytes / t / (probe_bytes / p) for t, p in zip(seconds, probe_seconds, strict=True))
    return per_round[len(per_round) // 2]


def run_case(n: int, k: int, m: int, rounds: int) -> list[dict]:
    """Bench rows for one (n, k) weight at batch ``m``: fp32, torch.ao int8 and every kernel of each rung;
    at batch 1 also the streamed latency (module docstring)."""
    torch.manual_seed(0)
    w = torch.randn(n, k) / k**0.5
    x = torch.randn(m, k)
    built, makers, wbytes, selected = _variants(w, m)
    fns = {v: (lambda f=f: f(x)) for v, f in built.items()}
    flops = n * k * max(m, 1)
    inner = max(1, min(20, int(2e8 / flops)))
    with torch.no_grad():
        lat = timed(fns, rounds, inner)
    stream, paired, working = {}, {}, {}
    if m == 1:
        cache = llc_bytes()
        reach = working_set(cache, available_bytes(), len(makers))
        copies = {v: [built[v]] + [makers[v]() for _ in range(copies_for(wbytes[v], reach) - 1)] for v in makers}
        calls = {v: [lambda f=f: f(x) for f in fs] for v, fs in copies.items()}
        working = {v: len(fs) * wbytes[v] for v, fs in copies.items() if wbytes[v]}  # under 2x the cache if capped
        probe_bytes = max(2 * cache, PROBE_MIN_BYTES)
        calls[READ_PROBE] = [read_probe(probe_bytes)]
        with torch.no_grad():
            samples = streamed_rounds(calls, max(5, rounds // 3))
        del copies, calls
        probe_s = samples.pop(READ_PROBE)
        stream = {v: sorted(t)[len(t) // 2] * 1e3 for v, t in samples.items()}
        stream_gbps = probe_bytes / min(probe_s) / 1e9  # the probe's fastest round, as read_gbps is a best of five
        paired = {v: round(paired_fraction(wbytes[v], t, probe_bytes, probe_s), 4) for v, t in samples.items()
                  if wbytes[v]}
    base = lat["fp32 F.linear"]
    rows = []
    for variant, ms in lat.items():
        row = {**latency_row("linear", [n, k], m, variant, ms, base), "selected": variant in selected,
               "weight_bytes": wbytes[variant], "ops": 2 * n * k * m}
        if FP32_ONEDNN in lat:
            row["ratio_vs_fp32_onednn"] = round(lat[FP32_ONEDNN] / ms, 3)
        if variant in stream:
            row["stream_latency_ms"] = round(stream[variant], 4)
            row["stream_ratio_vs_fp32"] = round(stream["fp32 F.linear"] / stream[variant], 3)
            row["stream_read_gbps"] = round(stream_gbps, 2)
            if variant in paired:
                row["paired_limit_fraction"] = paired[variant]
            if variant in working:
                row["stream_working_set_bytes"] = working[variant]
        rows.append(row)
    return rows


TORCH_AO = "torch.ao quantize_dynamic int8"
#: the streamed rounds' read-bandwidth probe (not a row)
READ_PROBE = "read probe"
PROBE_MIN_BYTES = 64 << 20  # past any cache sysfs might under-report
#: fp32 on oneDNN's GEMM, the engine dequantising kernels take off Intel (kernels.fp32_gemm)
FP32_ONEDNN = "fp32 F.linear on oneDNN"


def latency_row(case: str, shape: list, batch: int, variant: str, ms: float, base_ms: float) -> dict:
    """One bench row (schema bitladder.bench/1) of a kernel timed without a fidelity check."""
    return {"case": case, "shape": shape, "batch": batch, "variant": variant, "latency_ms": round(ms, 4),
            "ratio_vs_fp32": round(base_ms / ms, 3), "peak_rss_mb": None, "cos_mean": None, "cos_min": None,
            "knn10": None}


def linear_rows(sizes=(1024, 4096), batches=(1, 64), rounds: int = 25) -> Iterator[dict]:
    """Bench rows of :func:`run_case` for a square weight of each size at each batch, case by case; where torch.ao's
    dynamic int8 Linear cannot run, a row that says why in its place, as the suites list a missing peer."""
    why = torch_ao_unavailable()
    for n in sizes:
        for m in batches:
            yield from run_case(n, n, m, rounds)
            if why is not None:
                yield {"case": "linear", "shape": [n, n], "batch": m, "variant": TORCH_AO, "latency_ms": None,
                       "ratio_vs_fp32": None, "peak_rss_mb": None, "cos_mean": None, "cos_min": None, "knn10": None,
                       "selected": False, "error": why}
