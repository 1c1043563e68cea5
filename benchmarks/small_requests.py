"""MiniLM W4 g64 on small requests: one sentence of 8 to 128 tokens, each Linear on the kernel auto picks
against the alternatives it had, inside the model, timed side by side with fp32.

For each C path (``--cpus``: ``native`` and ``avx2`` run the AVX-512 VNNI and the AVX2 path on a VNNI host;
each in its own process, ``BITLADDER_CPU`` set), fp32 and W4 g64 RTN models whose Linears are pinned to a
kernel run one request in turn, in a random order each round (median of ``--rounds``); a request of n tokens
is the evaluation corpus's own tokens run together. Also the fidelity that comes with
it: the W4 model's mean cosine to fp32 on the 256 evaluation sentences, 64 per call (the evaluation batches) and one per call (auto
quantises activations to int8 per block on small requests only).

    OMP_NUM_THREADS=2 python benchmarks/small_requests.py --out docs/results/small-requests-minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

LENGTHS = (8, 18, 32, 64, 128)
POLICIES = ("auto", "c-lowbit-a8", "ort-nbits", "ort-nbits-fp32")


def _one(batch: dict, n: int) -> dict:
    """One request of exactly ``n`` tokens: the batch's sentences' tokens, padding left out, run together."""
    import torch

    ids = batch["input_ids"][batch["attention_mask"].bool()][:n].reshape(1, -1)
    assert ids.shape[1] == n, f"the batch holds {ids.shape[1]} tokens, fewer than {n}"
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def measure(rounds: int) -> dict:
    """Rows of this process's C path: ratio to fp32 per policy and length, and the auto model's fidelity."""
    import torch

    from bitladder import Int
    from bitladder.nn.base import QuantModule
    from bitladder.nn.select import run
    from bitladder.pipeline.bench.minilm import _bitladder, one_by_one
    from bitladder.pipeline.measure.evaluate import fidelity, outputs
    from bitladder.zoo import minilm

    spec = minilm.spec()
    models = {"fp32": spec.model}
    for policy in POLICIES:
        m = _bitladder(spec, Int(4, group=64))
        if policy != "auto":
            for name, q in m.named_modules():
                if isinstance(q, QuantModule) and "embeddings" not in name:
                    q.set_kernel_policy(policy)
        models[policy] = m
    rows = []
    with torch.inference_mode():
        for n in LENGTHS:
            one = _one(spec.latency_batch, n)
            times = {k: [] for k in models}
            for m in models.values():
                for _ in range(3):
                    run(m, one)
            order = random.Random(n)
            for _ in range(rounds):  # a new order each round: the model run after fp32 finds its caches flushed
                for k in order.sample(list(models), len(models)):
                    m = models[k]
                    t = time.perf_counter()
                    run(m, one)
                    times[k].append(time.perf_counter() - t)
            fp = statistics.median(times["fp32"])
            for k, v in times.items():
                if k != "fp32":
                    s = statistics.median(v)
                    rows.append({"case": "minilm", "tokens": n, "variant": f"W4 g64 RTN, kernel {k}",
                                 "latency_ms": round(s * 1e3, 3), "fp32_latency_ms": round(fp * 1e3, 3),
                                 "ratio_vs_fp32": round(fp / s, 3)})
                    print(json.dumps(rows[-1]), flush=True)
    ref = outputs(spec.model, spec.eval_batches)
    auto = models["auto"]
    fid = {"cos_mean_64_per_call": round(fidelity(spec, outputs(auto, spec.eval_batches), ref)["fidelity"], 6),
           "cos_mean_one_per_call": round(fidelity(spec, outputs(auto, one_by_one(spec.eval_batches)),
                                                   ref)["fidelity"], 6)}
    return {"rows": rows, "w4_auto_fidelity": fid}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--cpus", default="native,avx2", help="BITLADDER_CPU values, one process each")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(measure(a.rounds)), flush=True)
        return
    from bitladder.atomic import atomic_path
    from bitladder.pipeline.measure.machine import machine

    res = {"command": f"python benchmarks/small_requests.py --cpus {a.cpus} --rounds {a.rounds}",
           "machine": machine(), "rows": [], "w4_auto_fidelity": {}}
    for cpu in a.cpus.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", "--rounds", str(a.rounds)], check=True,
                             env={**os.environ, "BITLADDER_CPU": cpu}, capture_output=True, text=True).stdout
        got = json.loads(out.split("RESULT ", 1)[1])
        res["rows"] += [{"cpu_path": cpu, **r} for r in got["rows"]]
        res["w4_auto_fidelity"][cpu] = got["w4_auto_fidelity"]
        print(cpu, json.dumps(got), flush=True)
    if a.out:
        with atomic_path(Path(a.out)) as tmp:
            Path(tmp).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
