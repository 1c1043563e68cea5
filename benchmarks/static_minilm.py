"""Static W8A8 on MiniLM: fidelity and speed of static activation grids (all layers, or only the layers that read
a LayerNorm with per-token int8 elsewhere; SmoothQuant or a Hadamard rotation against the outliers) beside
per-token W8A8, every variant timed against fp32 in one run.

    OMP_NUM_THREADS=2 python benchmarks/static_minilm.py --calib 2 --json docs/results/static-minilm-avx2.json
    OMP_NUM_THREADS=2 python benchmarks/static_minilm.py --calib-from kjv --calib 2 --onnx \
        --json docs/results/static-minilm-kjv-avx2.json

``--calib-from kjv`` calibrates on the unseen corpus's calibration half and scores on both corpora (docstrings
and the unseen corpus's disjoint evaluation half); ``--onnx`` also exports each static variant (QDQ around
integer matmuls) and runs it in onnxruntime: largest difference to the torch model's embeddings on the timing
batch, beside the model's own conditioning: the largest difference between two torch runs of it whose only
difference is the embedding output scaled by 1 + 1e-6 (``perturbed_max_abs_diff``). A quantised network moves
codes wherever an input sits near a rounding boundary, and each moved code moves more downstream: two exact
implementations that round one float operation differently part by about that much.

Per-token rows with a Hadamard rotation (no SmoothQuant) stand beside them. glibc's malloc thresholds are pinned
for the run (pipeline/measure/allocator.py) so that ratios do not move with the allocation history.

7-bit weights: on CPUs without VNNI they let the integer GEMM take all 256 activation codes (2 * 255 * 63 fits
16 bits), so the static layers run on it with the calibrated grid itself (kernels/static_w8a8.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.methods.quantize.configs import Int
from bitladder.methods.quantize.methods import Act
from bitladder.pipeline.bench.minilm import _bitladder, _session, single_sentence
from bitladder.pipeline.bench.minilm_rungs import W7A8_MIXED, W7A8_STATIC, W8A8_SQ
from bitladder.pipeline.measure.allocator import steady_allocator
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo import minilm, unseen
from bitladder.zoo.registry import resolve

VARIANTS = {"W7A8 static on LayerNorm inputs, per-token elsewhere, SmoothQuant 0.65": W7A8_MIXED,
            "W7A8 static everywhere, SmoothQuant 0.65": W7A8_STATIC,
            "W7A8 static everywhere, Hadamard 64": Int(7, act=Act(), rotate=64),
            "W7A8 static everywhere, Hadamard 32": Int(7, act=Act(), rotate=32),
            "W8A8 per-token, SmoothQuant 0.65": W8A8_SQ,
            "W8A8 per-token, Hadamard 32": Int(8, act=Act(dynamic="token"), rotate=32),
            "W8A8 per-token, Hadamard 64": Int(8, act=Act(dynamic="token"), rotate=64)}


def onnx_gap(q, batch, folder: Path) -> dict:
    """The model's exported ONNX file in onnxruntime against the model itself on ``batch``: largest |difference|,
    largest |value| of the torch output, and the smallest per-sentence cosine between the two."""
    from bitladder.io.onnx_export import export_onnx

    path = folder / f"m{len(list(folder.iterdir()))}.onnx"
    export_onnx(q, {k: v[:2] for k, v in batch.items()}, path, 21, "float")
    with torch.no_grad():
        got, want = _session(path)(**batch).float(), q(**batch).float()
    return {"onnx_max_abs_diff": float((got - want).abs().max()), "onnx_out_max_abs": float(want.abs().max()),
            "onnx_cos_min": float(torch.nn.functional.cosine_similarity(got, want, dim=-1).min()),
            "perturbed_max_abs_diff": perturbed_gap(q, batch, want)}


def perturbed_gap(q, batch, want: torch.Tensor, rel: float = 1e-6) -> float:
    """Largest |difference| of ``q``'s output on ``batch`` when its embedding output is scaled by 1 + ``rel``."""
    norm = q.encoder.embeddings.LayerNorm
    hook = norm.register_forward_hook(lambda m, a, out: out * (1 + rel))
    try:
        with torch.no_grad():
            return float((q(**batch).float() - want).abs().max())
    finally:
        hook.remove()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=2, help="calibration batches (64 sentences each)")
    ap.add_argument("--calib-from", default="docstrings", choices=["docstrings", unseen.NAME])
    ap.add_argument("--onnx", action="store_true", help="export the static variants and compare in onnxruntime")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    allocator = steady_allocator()  # ratios otherwise move with the run's allocation history
    spec = resolve("minilm")
    sets = {"docstrings": spec.eval_batches}
    if args.calib_from == unseen.NAME:
        sets[unseen.NAME] = spec.unseen_batches
        calib = minilm.tokenize(unseen.calibration_sentences(64 * args.calib), by_length=True)
    else:
        calib = spec.calib_batches[: args.calib]
    refs = {k: outputs(spec.model, b) for k, b in sets.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in VARIANTS.items():
            t0 = time.perf_counter()
            q = _bitladder(spec, cfg, calib)
            quantise_s = time.perf_counter() - t0
            row = {"variant": name, "config": cfg.to_dict()}
            for k, b in sets.items():
                fid = fidelity(spec, outputs(q, b), refs[k])
                pre = "" if k == "docstrings" else f"{k}_"
                row.update({f"{pre}cos_mean": fid["fidelity"], f"{pre}cos_min": fid["cos_min"], f"{pre}knn10": fid["knn10"]})
            b32 = paired_latency(spec.model, q, spec.latency_batch, 15)
            b1 = paired_latency(spec.model, q, single_sentence(spec.latency_batch), 30)
            row.update({"latency_ms": 1e3 * b32[1], "ratio_vs_fp32": b32[0] / b32[1],
                        "ratio_vs_fp32_batch1": b1[0] / b1[1], "quantize_s": quantise_s,
                        "kernels": sorted({m.kernel for m in q.modules() if hasattr(m, "kernel")})})
            if args.onnx and not cfg.act.dynamic:
                try:
                    row.update(onnx_gap(q, spec.latency_batch, Path(tmp)))
                except BitladderError as e:  # a variant the exporter refuses is a result too
                    row["onnx_error"] = str(e)
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = {"schema": "bitladder.static-minilm/1", "command": "python " + " ".join(sys.argv), "machine": machine(),
           "allocator": allocator,
           "calib_from": args.calib_from, "calib_sentences": sum(len(b["input_ids"]) for b in calib),
           "eval_sentences": sum(len(b["input_ids"]) for b in spec.eval_batches),
           "batch": len(spec.latency_batch["input_ids"]), "rows": rows}
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps(out, indent=1))

if __name__ == "__main__":
    main()
