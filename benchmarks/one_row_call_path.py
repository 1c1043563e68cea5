"""Where a one-row low-bit Linear call goes when its weights stream from memory: the kernel's C entry alone against
the whole call, and what the framework's own steps cost right after such a call.

    OMP_NUM_THREADS=2 python benchmarks/one_row_call_path.py --json docs/results/one-row-call-path-xeon.json
    BITLADDER_CPU=avx512 ... python benchmarks/one_row_call_path.py --qtype int8 --json ...

As ``bitladder bench --suite linear`` does at batch 1, each variant cycles through enough copies of a 4096² weight
to exceed twice the last-level cache, in rounds interleaved with the read probe (a sum over twice the cache);
fraction = the weight's bytes over the median call, over the probe's fastest round ("best", the bench's
``limit_fraction``) or over the probe of the same round ("paired"). Variants, all on the kernel ``auto`` selects:

- ``call``: ``kernel(x)``, the bench's row;
- ``entry``: the kernel's C function on prepared inputs and a reused output (no Python, no allocation per call).

A sweep through twice the cache evicts the interpreter's and torch's code and data as well as the weights, so the
steps around the C call (an output tensor, numpy views of the operands) run cold: ``cold_steps_us`` times each such
step right after a streamed call and again right after itself (warm).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

N = K = 4096
FORMATS = {"int4": ("int4", 64), "int8": ("int8", None), "int2": ("int2", 64)}  # qtype, group (None: per channel)


def _kernel(qtype: str):
    import torch

    from bitladder.formats.layout import Layout
    from bitladder.kernels import KERNELS
    from bitladder.kernels.select import choose
    from bitladder.tensor.quantized import QuantizedTensor

    name, group = FORMATS[qtype]
    torch.manual_seed(0)
    lay = Layout("channel") if group is None else Layout("group", group=group)
    qt = QuantizedTensor.from_float(torch.randn(N, K) / K**0.5, name, lay)
    cls = KERNELS[choose(qt, 1)]
    if not hasattr(cls, "entry"):
        raise SystemExit(f"{qtype}: auto selects {cls.name}, which has no C entry of the GEMV's arguments")
    return cls, qt


def _entry(kern, x, y, threads: int):
    """The kernel's C function on numpy operands (the arguments ``CLowbitKernel._run`` passes)."""
    from bitladder.kernels.c_lowbit import c_module

    fn = getattr(c_module(), kern.entry)
    return lambda: fn(kern.w, kern.ws, kern.zo, x, y, 1, N, K, kern.kp, kern.g, kern.xb, kern.bits, kern.mult,
                      kern.off, kern.simd, threads)


def measure(qtype: str, rounds: int) -> dict:
    import numpy as np
    import torch

    from bitladder.pipeline.bench.limits import available_bytes, llc_bytes
    from bitladder.pipeline.bench.linear import PROBE_MIN_BYTES, copies_for, working_set

    cls, qt = _kernel(qtype)
    threads = torch.get_num_threads()
    first = cls.from_qtensor(qt)
    cache = llc_bytes()
    kerns = [first] + [cls.from_qtensor(qt) for _ in range(copies_for(first.nbytes, working_set(
        cache, available_bytes(), 2), cap=256) - 1)]
    x = torch.randn(1, K)
    xa, ya = x.numpy(), np.empty((1, N), np.float32)
    entries = [_entry(k, xa, ya, threads) for k in kerns]
    probe = torch.ones(max(2 * cache, PROBE_MIN_BYTES) // 4)
    with torch.inference_mode():
        entries[0]()
        assert torch.equal(torch.from_numpy(ya.copy()), first(x)), "the C entry must give the call's bits"

        def call():
            for k in kerns:
                k(x)

        def entry():
            for e in entries:
                e()

        fns = {"call": call, "entry": entry, "probe": probe.sum}
        for f in fns.values():
            f()
        samples: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(rounds):
            for name in list(fns) if r % 2 == 0 else list(fns)[::-1]:
                t = time.perf_counter()
                fns[name]()
                samples[name].append(time.perf_counter() - t)
        cold = cold_steps(kerns, entries, x)
    pbytes = probe.numel() * 4
    best = pbytes / min(samples["probe"])
    rows = []
    for name in ("call", "entry"):
        per = [t / len(kerns) for t in samples[name]]
        med = statistics.median(per)
        paired = statistics.median((first.nbytes / p) / (pbytes / q) for p, q in zip(per, samples["probe"]))
        rows.append({"variant": name, "kernel": first.name, "latency_us": round(med * 1e6, 1),
                     "fraction_best_probe": round(first.nbytes / med / best, 4), "fraction_paired": round(paired, 4)})
    return {"qtype": qtype, "weight_bytes": first.nbytes, "copies": len(kerns), "rounds": rounds,
            "probe_read_gbps_best": round(best / 1e9, 2), "rows": rows, "cold_steps_us": cold}


def cold_steps(kerns, entries, x, repeats: int = 60) -> dict:
    """Per framework step: its median time right after a streamed C call to the next copy (cold), and again right
    after itself (warm), in microseconds."""
    import torch

    small = torch.ones(4)
    steps = {"torch.empty(1, N)": lambda: torch.empty(1, N), "x.numpy()": x.numpy,
             "torch.get_num_threads()": torch.get_num_threads, "a 4-element torch add": lambda: small.add(1),
             "a Python no-op call": lambda: None}
    out = {}
    for name, step in steps.items():
        cold, warm = [], []
        for i in range(repeats):
            entries[i % len(entries)]()
            t0 = time.perf_counter()
            step()
            t1 = time.perf_counter()
            step()
            cold.append(t1 - t0)
            warm.append(time.perf_counter() - t1)
        out[name] = {"cold": round(statistics.median(cold) * 1e6, 2), "warm": round(statistics.median(warm) * 1e6, 2)}
    return out


def main() -> None:
    from bitladder.atomic import atomic_path
    from bitladder.pipeline.measure.machine import command, machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--qtype", choices=sorted(FORMATS), default="int4")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    got = measure(args.qtype, args.rounds)
    print(f"{args.qtype} 4096², one row, {got['copies']} copies; probe {got['probe_read_gbps_best']} GB/s (best)")
    for r in got["rows"]:
        print(f"  {r['variant']:6s} {r['kernel']:16s} {r['latency_us']:7.1f} us  fraction {r['fraction_best_probe']:.3f}"
              f" (paired {r['fraction_paired']:.3f})")
    for name, c in got["cold_steps_us"].items():
        print(f"  {name:26s} after a streamed call {c['cold']:6.2f} us, warm {c['warm']:5.2f} us")
    if args.json:
        out = {"schema": "bitladder.one-row-call-path/1",
               "command": command("OMP_NUM_THREADS=2 python benchmarks/one_row_call_path.py", sys.argv[1:]),
               "machine": machine(), **got}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
