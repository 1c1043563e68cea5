"""MiniLM at 32 sentences, eager and under ``torch.compile`` (inductor), fp32 and bitladder rungs, in one process.

    OMP_NUM_THREADS=2 python benchmarks/compile_minilm.py --json docs/results/compile-minilm-xeon.json
    OMP_NUM_THREADS=2 python benchmarks/compile_minilm.py --rung "bitladder W4 g64 gptq" --json ...

Each model is built as ``bitladder bench --suite minilm`` builds its worker (``serve_variant``); a quantised
layer's forward runs eagerly inside the compiled model (one graph break per layer: ``nn.base.eager``). Per model
and mode: the first call (compilation included), then the median of 10 forwards after 3, in inference mode, and
the mean cosine of the embeddings to eager fp32's on the timed batch.
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

RUNGS = ("bitladder W8A8 dynamic per-token + SmoothQuant 0.65 (oneDNN)", "bitladder W8A8 dynamic per-token + Hadamard 64",
         "bitladder W7A8 static + SmoothQuant 0.65", "bitladder W4 g64 gptq")


def rows(rungs: list[str]) -> list[dict]:
    import torch

    from bitladder.pipeline.bench.minilm import serve_variant
    from bitladder.pipeline.measure.evaluate import run

    with tempfile.TemporaryDirectory() as folder:
        models = {n: serve_variant(n, folder)[:2] for n in ["fp32 torch", *rungs]}
    batch = models["fp32 torch"][1][0]
    out = []
    with torch.inference_mode():
        ref = run(models["fp32 torch"][0], batch)
        for name, (model, _) in models.items():
            for mode in ("eager", "compiled"):
                f = model if mode == "eager" else torch.compile(model, dynamic=False)
                t0 = time.perf_counter()
                y = run(f, batch)
                first = time.perf_counter() - t0
                for _ in range(3):
                    run(f, batch)
                times = []
                for _ in range(10):
                    t = time.perf_counter()
                    run(f, batch)
                    times.append(time.perf_counter() - t)
                cos = torch.nn.functional.cosine_similarity(y.float(), ref.float()).mean().item()
                out.append({"model": name, "mode": mode, "latency_ms": round(statistics.median(times) * 1e3, 2),
                            "first_call_s": round(first, 2), "cos_mean": round(cos, 6)})
    base = next(r["latency_ms"] for r in out if r["model"] == "fp32 torch" and r["mode"] == "eager")
    for r in out:
        r["ratio_vs_fp32_eager"] = round(base / r["latency_ms"], 3)
    return out


def main() -> None:
    from bitladder.atomic import atomic_path
    from bitladder.pipeline.measure.machine import command, machine

    ap = argparse.ArgumentParser()
    ap.add_argument("--rung", action="append", help="a minilm suite variant (repeatable; default: four rungs)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    got = rows(args.rung or list(RUNGS))
    for r in got:
        print(f"{r['model'][:60]:60s} {r['mode']:8s} {r['latency_ms']:8.1f} ms  x{r['ratio_vs_fp32_eager']:.2f} eager "
              f"fp32  first call {r['first_call_s']:5.1f} s  cos {r['cos_mean']:.5f}")
    if args.json:
        out = {"schema": "bitladder.compile-minilm/1",
               "command": command("OMP_NUM_THREADS=2 python benchmarks/compile_minilm.py", sys.argv[1:]),
               "machine": machine(), "sentences": 32, "rows": got}
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
