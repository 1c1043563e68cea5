"""What a Hadamard rotation of each Linear's input (``Int(..., rotate=B)``) does to MiniLM's fidelity at
W4 / W3 / W2 (round-to-nearest and GPTQ), W4A8 and per-token W8A8, side by side with the unrotated rung,
and what it costs at batch 32 (one run, same machine).

    python benchmarks/rotation.py --json docs/results/rotation-minilm.json

The embeddings are int8 per row in every row; the transformer blocks' Linear layers take the rung.
Fidelity is measured on the evaluation sentences, disjoint from the calibration ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import bitladder
from bitladder import Int
from bitladder.methods.quantize.methods import GPTQ, Act
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo.registry import resolve
from bitladder.nn.select import run

BLOCKS = (None, 64, 128)


def rungs():
    """(rung, method, config kwargs, rotation blocks to try)."""
    for bits, sym in ((4, True), (3, False), (2, False)):
        name = f"int{bits}-g64{'' if sym else '-asym'}"
        yield name, "rtn", dict(bits=bits, group=64, symmetric=sym), BLOCKS
        yield name, "gptq", dict(bits=bits, group=64, symmetric=sym, method=GPTQ()), (None, 128)
    yield "int4-g64 w4a8", "gptq + static minmax", dict(bits=4, group=64, method=GPTQ(), act=Act()), (None, 128)
    yield "int8 w8a8", "dynamic per-token", dict(bits=8, act=Act(dynamic="token")), (None, 128)


def latency_ms(model, batch, repeats: int = 7) -> float:
    """Median of ``repeats`` timed calls after one warm-up."""
    with torch.inference_mode():
        run(model, batch)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run(model, batch)
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    spec = resolve("minilm")
    ref = outputs(spec.model, spec.eval_batches)
    start = bitladder.quantize(spec.model, Int(8), include=["*embeddings*"])
    fp32_ms = latency_ms(spec.model, spec.latency_batch)
    rows = []
    print(f"{'rung':18s} {'method':22s} {'rotate':>6s} {'cos mean':>9s} {'cos min':>8s} {'kNN10':>6s} {'quant s':>8s} "
          f"{'x fp32':>7s}")
    for rung, method, kw, blocks in rungs():
        for block in blocks:
            t0 = time.perf_counter()
            q = bitladder.quantize(start, Int(**kw, rotate=block), exclude=["*embeddings*"], calib=spec.calib_batches)
            dt = time.perf_counter() - t0
            f = fidelity(spec, outputs(q, spec.eval_batches), ref)
            ms = latency_ms(q, spec.latency_batch)
            rows.append({"rung": rung, "method": method, "rotate": block, "cos_mean": f["fidelity"],
                         "cos_min": f["cos_min"], "knn10": f["knn10"], "quantize_s": round(dt, 1),
                         "latency_ms": round(ms, 2), "ratio_vs_fp32": round(fp32_ms / ms, 3)})
            print(f"{rung:18s} {method:22s} {block or '-':>6} {f['fidelity']:9.4f} {f['cos_min']:8.4f} "
                  f"{f['knn10']:6.3f} {dt:8.1f} {fp32_ms / ms:7.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"schema": "bitladder.rotation/1", "model": "minilm", "batch": 32,
                       "command": "python benchmarks/rotation.py --json docs/results/rotation-minilm.json",
                       "fp32_latency_ms": round(fp32_ms, 2), "machine": machine(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
