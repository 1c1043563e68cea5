"""The digits CNN run channels-last, float and quantised, against the NCHW model as shipped: one run, side by side.

    OMP_NUM_THREADS=2 python benchmarks/channels_last_digits.py --json docs/results/digits-channels-last-vnni.json

A quantised convolution records the float layer's memory format and gives its outputs in it, as ``F.conv2d`` does
(docs/DESIGN.md, 'Conv2d W8A8'): a model converted with ``.to(memory_format=torch.channels_last)`` stays so once
quantised, and its pooling and activations run channels-last. Each variant: the median of 15 interleaved rounds of
20 calls on the 450 test images (inference mode, glibc's malloc thresholds pinned), its ratio to the shipped NCHW
model and to the same model channels-last, and its test accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import bitladder
from bitladder.atomic import atomic_path
from bitladder.pipeline.ladder.rungs import parse_rung
from bitladder.pipeline.measure.allocator import steady_allocator
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo import digits

RUNGS = ("fp32", "int8", "int4-g32", "int2-g32-asym", "binary", "int8-a8", "int8-a8d")
NCHW, CL = "fp32 NCHW (the shipped model, eager)", "fp32 channels-last (the same model converted)"


def _per_call(model, x: torch.Tensor, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        model(x)
    return (time.perf_counter() - t0) / calls


def rows(rounds: int = 15, calls: int = 20) -> list[dict]:
    """One row per variant: latency, ratios to the NCHW and channels-last fp32 models, accuracy."""
    spec = digits.spec()
    x = spec.latency_batch
    cl = copy.deepcopy(spec.model).to(memory_format=torch.channels_last)
    models = {NCHW: spec.model, CL: cl}
    for rung in RUNGS:
        models[f"bitladder {rung}, channels-last"] = bitladder.quantize(copy.deepcopy(cl), parse_rung(rung),
                                                                         calib=spec.calib_batches)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            _per_call(m, x, 5)
        for i in range(rounds):  # alternate the order so that no variant always runs after the same one
            for name, m in (models.items() if i % 2 else reversed(list(models.items()))):
                times[name].append(_per_call(m, x, calls))
        med = {k: statistics.median(v) for k, v in times.items()}
        return [{"variant": k, "latency_ms": round(med[k] * 1e3, 3), "ratio_vs_fp32_nchw": round(med[NCHW] / med[k], 3),
                 "ratio_vs_fp32_channels_last": round(med[CL] / med[k], 3),
                 "accuracy": round(float((m(x).argmax(1) == spec.targets).float().mean()), 4)}
                for k, m in models.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    allocator = steady_allocator()  # ratios otherwise move with the run's allocation history
    got = rows()
    for r in got:
        print(f"{r['variant']:48s} {r['latency_ms']:7.3f} ms  x{r['ratio_vs_fp32_nchw']:.2f} NCHW  "
              f"x{r['ratio_vs_fp32_channels_last']:.2f} channels-last  accuracy {r['accuracy']:.4f}")
    if args.json:
        out = {"schema": "bitladder.channels-last-digits/1",
               "command": "OMP_NUM_THREADS=2 " + " ".join(["python", "benchmarks/channels_last_digits.py",
                                                           *sys.argv[1:]]),
               "machine": machine(), "allocator": allocator, "rows": got}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
