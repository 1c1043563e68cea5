"""Static W8A8 on MiniLM: fidelity and speed of static activation grids (all layers, or only the layers that read
a LayerNorm with per-token int8 elsewhere) beside per-token W8A8, every variant timed against fp32 in one run.

    OMP_NUM_THREADS=2 python benchmarks/static_minilm.py --calib 2 --json docs/results/static-minilm-avx2.json

7-bit weights: on CPUs without VNNI they let the integer GEMM take all 256 activation codes (2 * 255 * 63 fits
16 bits), so the static layers run on it with the calibrated grid itself (kernels/static_w8a8.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bitladder.atomic import atomic_path
from bitladder.pipeline.bench.minilm import W7A8_MIXED, W7A8_STATIC, W8A8_SQ, _bitladder, single_sentence
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo.registry import resolve

VARIANTS = {"W7A8 static on LayerNorm inputs, per-token elsewhere, SmoothQuant 0.65": W7A8_MIXED,
            "W7A8 static everywhere, SmoothQuant 0.65": W7A8_STATIC,
            "W8A8 per-token, SmoothQuant 0.65": W8A8_SQ}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=2, help="calibration batches (64 sentences each)")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    spec = resolve("minilm")
    ref = outputs(spec.model, spec.eval_batches)
    rows = []
    for name, cfg in VARIANTS.items():
        t0 = time.perf_counter()
        q = _bitladder(spec, cfg, spec.calib_batches[: args.calib])
        quantise_s = time.perf_counter() - t0
        fid = fidelity(spec, outputs(q, spec.eval_batches), ref)
        b32 = paired_latency(spec.model, q, spec.latency_batch, 15)
        b1 = paired_latency(spec.model, q, single_sentence(spec.latency_batch), 30)
        rows.append({"variant": name, "config": cfg.to_dict(), "cos_mean": fid["fidelity"], "cos_min": fid["cos_min"],
                     "knn10": fid["knn10"], "latency_ms": 1e3 * b32[1], "ratio_vs_fp32": b32[0] / b32[1],
                     "ratio_vs_fp32_batch1": b1[0] / b1[1], "quantize_s": quantise_s,
                     "kernels": sorted({m.kernel for m in q.modules() if hasattr(m, "kernel")})})
        print(json.dumps(rows[-1]), flush=True)
    out = {"schema": "bitladder.static-minilm/1", "command": "python " + " ".join(sys.argv), "machine": machine(),
           "calib_sentences": 64 * args.calib, "eval_sentences": sum(len(b["input_ids"]) for b in spec.eval_batches),
           "batch": len(spec.latency_batch["input_ids"]), "rows": rows}
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
