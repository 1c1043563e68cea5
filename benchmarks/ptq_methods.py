"""Every post-training method against round-to-nearest at each rung, fidelity and time, one run.

    python benchmarks/ptq_methods.py --model digits --json runs/ptq-digits.json
    python benchmarks/ptq_methods.py --model minilm --json runs/ptq-minilm.json
    python benchmarks/ptq_methods.py --model digits --only gptq,gptq+tune --json docs/results/ptq-digits-tune-avx2.json

MiniLM: the transformer blocks' Linear layers take the rung; the embeddings are int8 per row (RTN)
in every row of the table, so rows differ only by the method.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import bitladder
from bitladder import Int
from bitladder.methods.quantize.methods import AWQ, GPTQ, HQQ, RTN, Act, AdaRound, Tune
from bitladder.pipeline.measure.machine import machine
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.measure.memory import PeakMemory
from bitladder.zoo.registry import resolve


def weight_rows(group: int, adaround_iters: int):
    for bits in (4, 3, 2):
        for sym in ((True, False) if bits == 4 else (False,)):
            base = dict(bits=bits, group=group, symmetric=sym)
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "rtn", Int(**base)
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "rtn+clip", Int(**base, method=RTN(clip_search=True))
            if not sym:
                yield f"int{bits}-g{group}-asym", "hqq", Int(**base, method=HQQ())
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "awq", Int(**base, method=AWQ())
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "gptq", Int(**base, method=GPTQ())
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "gptq+tune", Int(**base, method=GPTQ(), tune=Tune())
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "gptq+bias-corr", Int(**base, method=GPTQ(),
                                                                                        bias_correction=True)
            yield f"int{bits}-g{group}{'' if sym else '-asym'}", "adaround", Int(
                **base, method=AdaRound(iters=adaround_iters))


def act_rows():
    yield "int8 w8a8", "rtn (weights only)", Int(8)
    for obs in ("minmax", "ema", "percentile", "mse", "kl"):
        yield "int8 w8a8", f"static {obs}", Int(8, act=Act(observer=obs))
    yield "int8 w8a8", "static minmax+smoothquant auto", Int(8, act=Act(smoothquant="auto"))
    yield "int8 w8a8", "static mse+smoothquant auto", Int(8, act=Act(observer="mse", smoothquant="auto"))
    yield "int4 w4a8", "gptq + static minmax", Int(4, group=32, method=GPTQ(), act=Act())
    yield "int4 w4a8", "adaround + static minmax", Int(4, group=32, method=AdaRound(), act=Act())
    yield "int8 w8a8", "cle + static minmax", Int(8, equalize=True, act=Act())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="digits")
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default="", help="comma-separated method names to run (default: all)")
    args = ap.parse_args()
    spec = resolve(args.model)
    ref = outputs(spec.model, spec.eval_batches)
    base = fidelity(spec, ref, ref)["fidelity"]
    minilm = spec.name == "minilm"
    exclude = ["*embeddings*"] if minilm else None
    rows = list(weight_rows(64 if minilm else 32, 100 if minilm else 500)) + list(act_rows())
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r[1] in keep]
    start = spec.model
    if minilm:
        start = bitladder.quantize(spec.model, Int(8), include=["*embeddings*"])
    results = []
    print(f"{'rung':24s} {'method':34s} {'fidelity':>9s} {'drop pt':>8s} {'cos min':>8s} {'kNN10':>6s} {'time s':>7s} "
          f"{'peak MB':>8s}")
    for rung, method, cfg in rows:
        with PeakMemory() as pm:
            t0 = time.perf_counter()
            q = bitladder.quantize(start, cfg, exclude=exclude, calib=spec.calib_batches)
            dt = time.perf_counter() - t0
        f = fidelity(spec, outputs(q, spec.eval_batches), ref)
        row = {"model": spec.name, "rung": rung, "method": method, **f,
               "fidelity_drop_pt": 100 * (base - f["fidelity"]), "time_s": dt,
               "peak_rss_mb": pm.peak_mb}
        results.append(row)
        cm = "" if f["cos_min"] is None else f"{f['cos_min']:.4f}"
        kn = "" if f["knn10"] is None else f"{f['knn10']:.3f}"
        pk = "" if pm.peak_mb is None else f"{pm.peak_mb:.0f}"
        print(f"{rung:24s} {method:34s} {f['fidelity']:9.4f} {row['fidelity_drop_pt']:8.2f} {cm:>8s} {kn:>6s} "
              f"{dt:7.1f} {pk:>8s}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"schema": "bitladder.ptq-methods/1", "command": "python " + " ".join(sys.argv),
                       "machine": machine(), "model": spec.name, "fp32_fidelity": base,
                       "torch_threads": torch.get_num_threads(), "rows": results}, fh, indent=1)


if __name__ == "__main__":
    main()
