"""Where a MiniLM forward's time goes, fp32 and a W8A8 rung, and the ratio the rung could reach at best.

    OMP_NUM_THREADS=2 python benchmarks/minilm_time_split.py --json docs/results/minilm-time-split-xeon.json
    BITLADDER_CPU=avx512 ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE FBGEMM_ENABLE_INSTRUCTIONS=AVX512 \
        OMP_NUM_THREADS=2 python benchmarks/minilm_time_split.py --json ...

Each model is built as ``bitladder bench --suite minilm`` builds its worker (``serve_variant``), both in this
process, timed on the bench's 32-sentence batch: the median of 15 forwards after 3, fp32 and the rung in turns,
then a torch profile of 5 forwards each. A forward's time splits into the GEMMs (the operators in ``GEMMS``),
attention (SDPA), the other torch operators, and what runs outside torch operators (the C token passes, Python).
The bench's GEMM peaks (``limits.measure``: fp32 GFLOP/s and int8 GOP/s on this CPU) give the ceiling: fp32's
forward over (fp32's GEMM time at the int8 peak's speed-up + everything else at fp32's cost), the rung's ratio
if its GEMMs ran at the int8 peak and its quantisation passes cost nothing; and ``gemm_ratio_needed``, the GEMM
speed-up over fp32's that ``--target`` would need with nothing else added.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

RUNG = "bitladder W8A8 dynamic per-token + SmoothQuant 0.65 (oneDNN)"
#: the torch operators that run a model's Linear GEMMs, fp32 and integer
GEMMS = ("aten::addmm", "aten::mm", "onednn::qlinear_pointwise", "mkldnn::_linear_pointwise",
         "quantized::linear_dynamic")


def _median_ms(model, batch, runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def split(model, batch, forwards: int = 5) -> dict:
    """Per-forward milliseconds of the GEMMs, attention, the other operators (by name) and the rest."""
    from torch.profiler import ProfilerActivity, profile

    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            model(**batch)
    wall = (time.perf_counter() - t) * 1e3 / forwards
    ops = {e.key: e.self_cpu_time_total / 1e3 / forwards for e in prof.key_averages()}
    gemm = sum(v for k, v in ops.items() if k in GEMMS)
    attention = sum(v for k, v in ops.items() if "scaled_dot_product" in k)
    other = {k: round(v, 3) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])
             if k not in GEMMS and "scaled_dot_product" not in k and v >= 0.2}
    return {"profiled_ms": round(wall, 2), "gemm_ms": round(gemm, 2), "attention_ms": round(attention, 2),
            "other_ops_ms": round(sum(ops.values()) - gemm - attention, 2),
            "outside_ops_ms": round(wall - sum(ops.values()), 2), "largest_other_ops_ms": other}


def rows(rung: str, target: float) -> dict:
    import torch

    from bitladder.pipeline.bench.limits import measure
    from bitladder.pipeline.bench.minilm import serve_variant

    peaks = measure()
    with tempfile.TemporaryDirectory() as folder:
        models = {n: serve_variant(n, folder)[:2] for n in ("fp32 torch", rung)}
    batch = models["fp32 torch"][1][0]
    with torch.inference_mode():
        for model, _ in models.values():
            for _ in range(3):
                model(**batch)
        turns = {n: [_median_ms(m, batch) for _ in range(3)] for n, (m, _) in models.items()}
        splits = {n: split(m, batch) for n, (m, _) in models.items()}
    fp32_ms, rung_ms = statistics.median(turns["fp32 torch"]), statistics.median(turns[rung])
    gemm = splits["fp32 torch"]["gemm_ms"]
    rest = max(fp32_ms - gemm, 0.0)  # fp32's unprofiled forward less its GEMMs: the profiler's cost left out
    peak_ratio = peaks["int8_gops"] / peaks["fp32_gflops"] if peaks.get("int8_gops") else None
    bound = None if peak_ratio is None else fp32_ms / (gemm / peak_ratio + rest)
    budget = fp32_ms / target - rest  # GEMM milliseconds left for the target ratio with nothing else added
    return {"rung": rung, "fp32_ms": round(fp32_ms, 2), "rung_ms": round(rung_ms, 2),
            "ratio_vs_fp32": round(fp32_ms / rung_ms, 3), "peaks": peaks,
            "int8_peak_ratio": None if peak_ratio is None else round(peak_ratio, 3),
            "gemm_ratio": round(gemm / splits[rung]["gemm_ms"], 3), "fp32_gemm_share": round(gemm / fp32_ms, 3),
            "ratio_bound": None if bound is None else round(bound, 3), "target": target,
            "gemm_ratio_needed": round(gemm / budget, 3) if budget > 0 else None, "split": splits}


def main() -> None:
    from bitladder.atomic import atomic_path
    from bitladder.pipeline.measure.machine import command, machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--rung", default=RUNG, help="a minilm suite variant")
    ap.add_argument("--target", type=float, default=1.6, help="a ratio to fp32 to find the GEMM speed-up for")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    got = rows(args.rung, args.target)
    for name, s in got["split"].items():
        print(f"{name[:60]:60s} {s['profiled_ms']:7.1f} ms: GEMMs {s['gemm_ms']:6.1f}, "
              f"attention {s['attention_ms']:5.1f}, other ops {s['other_ops_ms']:5.1f}, "
              f"outside ops {s['outside_ops_ms']:5.1f}")
    print(f"ratio {got['ratio_vs_fp32']:.2f}x; GEMMs {got['gemm_ratio']:.2f}x fp32's, "
          f"int8 peak {got['int8_peak_ratio']}x fp32's; fp32's GEMM share {got['fp32_gemm_share']:.2f}: "
          f"at best {got['ratio_bound']}x; "
          f"{got['target']}x needs GEMMs at {got['gemm_ratio_needed']}x fp32's")
    if args.json:
        out = {"schema": "bitladder.minilm-time-split/1",
               "command": command("OMP_NUM_THREADS=2 python benchmarks/minilm_time_split.py", sys.argv[1:]),
               "machine": machine(**{k: v for k, v in got["peaks"].items() if k in ("read_gbps", "fp32_gflops",
                                                                                   "int8_gops")}),
               "sentences": 32, **got}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
