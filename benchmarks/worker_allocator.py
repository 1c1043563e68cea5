"""MiniLM at 32 sentences (or one: ``--sentences 1``) in worker processes timed in the same rounds, each model
twice: with glibc's moving malloc thresholds (what bench workers kept until 2026-12-05) and with the settled ones
they now fix after their build.

    OMP_NUM_THREADS=2 python benchmarks/worker_allocator.py --json docs/results/worker-allocator-xeon.json
    OMP_NUM_THREADS=2 python benchmarks/worker_allocator.py --sentences 1 --json ...   # one sentence

glibc raises its mmap threshold when a mapped block is freed, and trims the heap above twice that: a worker whose
build allocated and freed large blocks (a quantising build) serves from a grown heap, a float model's worker does
not, and its forward maps fresh pages. Each worker builds its model, returns the build's freed heap to the OS (as
``pipeline/bench/isolated.py`` does), then fixes :data:`~bitladder.pipeline.measure.allocator.SETTLED` or not. Per
worker: the median forward of 12 rounds after 2 of warm-up (inference mode, 50 ms apart, every worker once a
round) and its median minor page faults per forward.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

#: variants of the minilm suite, each built by its worker function (``serve_variant``)
MODELS = ("fp32 torch", "bitladder W8A8 static + SmoothQuant 0.65", "bitladder W7A8 static + SmoothQuant 0.65")


def _serve(conn, which: str, settle: bool, sentences: int) -> None:
    import ctypes
    import gc
    import resource
    import tempfile

    import torch

    from bitladder.pipeline.bench.minilm import serve_variant
    from bitladder.pipeline.measure.evaluate import run

    with tempfile.TemporaryDirectory() as folder:  # built as the bench's worker builds it, fidelity passes included
        model, timed, _ = serve_variant(which, folder)
    batch = timed[0] if sentences == 32 else timed[1]
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    if settle:
        from bitladder.pipeline.measure.allocator import SETTLED, steady_allocator

        steady_allocator(*SETTLED)
    conn.send("ready")
    with torch.inference_mode():
        while conn.recv() == "run":
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            run(model, batch)
            t = time.perf_counter() - t0
            conn.send((t, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))


def rows(sentences: int = 32, rounds: int = 12, warmup: int = 2) -> list[dict]:
    ctx = mp.get_context("spawn")
    workers = {}
    for which in MODELS:
        for settle in (False, True):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, which, settle, sentences), daemon=True)
            proc.start()
            if here.recv() != "ready":
                raise RuntimeError(f"worker {which} did not start")
            workers[(which, settle)] = (proc, here)
    got: dict = {k: [] for k in workers}
    for r in range(warmup + rounds):
        for key, (_, conn) in workers.items():
            time.sleep(0.05)
            conn.send("run")
            t = conn.recv()
            if r >= warmup:
                got[key].append(t)
    for proc, conn in workers.values():
        conn.send("stop")
        proc.join(10)
    out = []
    for (which, settle), v in got.items():
        ms = statistics.median(t for t, _ in v) * 1e3
        base = statistics.median(t for t, _ in got[(MODELS[0], settle)]) * 1e3
        out.append({"model": which, "allocator": "settled" if settle else "moving", "latency_ms": round(ms, 2),
                    "ratio_vs_fp32_same_allocator": round(base / ms, 3),
                    "faults_per_forward": statistics.median(f for _, f in v)})
    return out


def main() -> None:
    from bitladder.atomic import atomic_path
    from bitladder.pipeline.measure.allocator import SETTLED
    from bitladder.pipeline.measure.machine import command, machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sentences", type=int, choices=(32, 1), default=32,
                    help="the suite's batch, or its first sentence alone")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    got = rows(args.sentences)
    for r in got:
        print(f"{r['model'][:40]:40s} {r['allocator']:8s} {r['latency_ms']:8.2f} ms  "
              f"x{r['ratio_vs_fp32_same_allocator']:.2f} fp32 (same allocator)  "
              f"{r['faults_per_forward']:.0f} faults a forward")
    if args.json:
        out = {"schema": "bitladder.worker-allocator/1",
               "command": command("OMP_NUM_THREADS=2 python benchmarks/worker_allocator.py", sys.argv[1:]),
               "machine": machine(), "settled": {"mmap_threshold": SETTLED[0], "trim_threshold": SETTLED[1]},
               "sentences": args.sentences,
               "rows": got}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
