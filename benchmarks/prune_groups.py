"""Structured pruning by dependency groups at 50 % of the FLOPs: digits CNN, a ResNet-style net (residual,
depthwise, grouped, odd-width concatenation, attention) and MiniLM (heads + FFN), side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/prune_groups.py --json docs/results/prune-groups.json

Per network: FLOPs and parameters of the pruned model over the original (measured: torch's FlopCounterMode
on the same input, parameter counts), bytes of the state dict, the latency speed-up (original / pruned, median
of interleaved runs on the same batch, glibc's malloc thresholds pinned: pipeline/measure/allocator.py), and
fidelity before and after a short recovery: digits is fine-tuned
on its labels (5 epochs), the ResNet-style net (random weights, no data) and MiniLM are distilled from the
original for a few hundred steps; fidelity is accuracy on the test split (digits), the cosine of the logits
to the original's on held-out random inputs (ResNet-style) and the mean cosine of the sentence embeddings on
the evaluation sentences (MiniLM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the ResNet-style test network lives with the tests

from bitladder.atomic import atomic_path  # noqa: E402
from bitladder.methods.prune.budget import call, flops, params  # noqa: E402
from bitladder.methods.prune.finetune import finetune_classifier  # noqa: E402
from bitladder.methods.prune.structured import ChannelPrune, prune_channels  # noqa: E402
from bitladder.methods.train.trainer import Train, fit  # noqa: E402
from bitladder.pipeline.measure.allocator import steady_allocator  # noqa: E402
from bitladder.pipeline.measure.evaluate import fidelity, outputs  # noqa: E402
from bitladder.pipeline.measure.machine import machine  # noqa: E402

CONFIG = ChannelPrune(ratio=0.5, target="flops")
# latency-aware: the same FLOPs budget, units weighed by the time their group's removal saves on this machine
LATENCY = ChannelPrune(ratio=0.5, target="flops", latency=True)
# and channel counts kept whole multiples of the CPU's fp32 vector width (SIMD kernels pad to it)
SIMD = ChannelPrune(ratio=0.5, target="flops", latency=True, round_to="simd")
# MiniLM: taylor importance (self-distillation gradients) keeps 0.66 cosine before recovery against 0.52 for l2
MINILM = ChannelPrune(ratio=0.5, target="flops", importance="taylor")


def state_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def interleaved(ref: nn.Module, models: list[nn.Module], batch, repeats: int, rounds: int = 3) -> list[list]:
    """Per model, per round: (median seconds of ``ref``, of the model); every round runs ref, model 1, model 2, ...
    in turn ``repeats`` times, so the models of one network are compared within the same stretch of host noise."""
    out = [[] for _ in models]
    with torch.no_grad():
        for _ in range(rounds):
            for net in (ref, *models):
                call(net, batch)
            times = [[] for _ in range(len(models) + 1)]
            for _ in range(repeats):
                for i, net in enumerate((ref, *models)):
                    t = time.perf_counter()
                    call(net, batch)
                    times[i].append(time.perf_counter() - t)
            for i in range(len(models)):
                out[i].append((statistics.median(times[0]), statistics.median(times[i + 1])))
    return out


def row(name: str, ref: nn.Module, pruned: nn.Module, report: dict, example, timing: list, metric: str,
        before: float, after: float, base: float, prune_s: float, recovery: str, config: ChannelPrune) -> dict:
    f = flops(pruned, example) / flops(ref, example)
    speedups = [a / b for a, b in timing]
    t_ref, t_new = statistics.median(a for a, _ in timing), statistics.median(b for _, b in timing)
    return {"network": name, "target": "50 % FLOPs", "importance": config.importance, "latency_aware": config.latency,
            "round_to": config.lanes(), "flops_ratio": round(f, 4),
            "importance_lost": round(report["importance_lost"], 3),
            "params_ratio": round(params(pruned) / params(ref), 4),
            "state_bytes_ratio": round(state_bytes(pruned) / state_bytes(ref), 4),
            "latency_ms": round(t_new * 1e3, 3), "fp32_latency_ms": round(t_ref * 1e3, 3),
            "speedup": round(statistics.median(speedups), 3), "speedup_rounds": [round(v, 3) for v in speedups],
            "metric": metric, "fidelity_fp32": round(base, 4),
            "fidelity_pruned": round(before, 4), "fidelity_recovered": round(after, 4),
            "drop_pt": round(100 * (base - after), 2), "recovery": recovery, "prune_s": round(prune_s, 2),
            "pruned": {k: list(v) for k, v in report["pruned"].items()}, "skipped": report["skipped"]}


def _name(net: str, config: ChannelPrune) -> str:
    return net + (" (latency-aware" + (", simd)" if config.round_to != 1 else ")") if config.latency else "")


def digits_rows(repeats: int) -> list[dict]:
    """Plain and latency-aware pruning (without and with SIMD widths) of the digits CNN, each fine-tuned, timed
    together."""
    from bitladder.zoo import digits

    spec, data = digits.spec(), digits.load_data()
    x, y = data["x_test"], data["y_test"]
    acc = lambda m: float((m(x).argmax(1) == y).float().mean())
    made = []
    for config in (CONFIG, LATENCY, SIMD):
        t = time.perf_counter()
        p, rep = prune_channels(spec.model, config, data["x_train"][:64] if not config.latency else x)
        prune_s = time.perf_counter() - t
        with torch.no_grad():
            before = acc(p)
        finetune_classifier(p, data["x_train"], data["y_train"], epochs=5)
        made.append((config, p, rep, before, prune_s))
    timing = interleaved(spec.model, [p for _, p, _, _, _ in made], x, repeats)
    with torch.no_grad():
        return [row(_name("digits", c), spec.model, p, rep, x[:1], tm, "accuracy", before, acc(p), acc(spec.model),
                    prune_s, "fine-tune 5 epochs on labels", c)
                for (c, p, rep, before, prune_s), tm in zip(made, timing)]


def resnet_rows(repeats: int, steps: int) -> list[dict]:
    """Plain and latency-aware pruning (without and with SIMD widths) of the ResNet-style net, each distilled, timed
    together."""
    from tests.methods.prune.nets import resnetish

    m = resnetish()
    g = torch.Generator().manual_seed(1)
    test = torch.randn(256, 3, 16, 16, generator=g)
    batches = [torch.randn(64, 3, 16, 16, generator=g) for _ in range(steps)]
    cos = lambda p: float(nn.functional.cosine_similarity(p(test), m(test), dim=-1).mean())
    made = []
    for config in (CONFIG, LATENCY, SIMD):
        t = time.perf_counter()
        p, rep = prune_channels(m, config, test[:32] if config.latency else test[:8])  # latency: the timed batch
        prune_s = time.perf_counter() - t
        with torch.no_grad():
            before = cos(p)
        fit(p, batches, None, Train(epochs=1, lr=2e-3), teacher=m, metric="cosine")
        made.append((config, p, rep, before, prune_s))
    timing = interleaved(m, [p for _, p, _, _, _ in made], test[:32], repeats)
    with torch.no_grad():
        return [row(_name("resnet-style", c), m, p, rep, test[:1], tm, "logit cosine", before, cos(p), 1.0, prune_s,
                    f"distil {steps} steps from the original on random inputs", c)
                for (c, p, rep, before, prune_s), tm in zip(made, timing)]


def minilm_row(repeats: int, batches: int) -> dict:
    from bitladder.zoo import minilm

    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    t = time.perf_counter()
    p, rep = prune_channels(spec.model, MINILM, spec.calib_batches[0], batches=spec.train_batches[:8], metric="cosine")
    prune_s = time.perf_counter() - t
    before = fidelity(spec, outputs(p, spec.eval_batches), ref)["fidelity"]
    if batches:
        fit(p, spec.train_batches[:batches], None, Train(epochs=1, lr=2e-4), teacher=spec.model, metric="cosine")
    after = fidelity(spec, outputs(p, spec.eval_batches), ref)["fidelity"]
    example = {k: v[:2] for k, v in spec.latency_batch.items()}
    timing = interleaved(spec.model, [p], spec.latency_batch, repeats)[0]
    with torch.no_grad():
        return row("minilm", spec.model, p, rep, example, timing, "embedding cosine",
                   before, after, 1.0, prune_s, f"distil 1 epoch on {batches} batches of 64 sentences", MINILM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--resnet-steps", type=int, default=300)
    ap.add_argument("--minilm-batches", type=int, default=16)
    ap.add_argument("--note", default="", help="how quiet the host was during the run (recorded in the JSON)")
    args = ap.parse_args()
    allocator = steady_allocator()  # ratios otherwise move with the run's allocation history
    rows = []
    makers = [lambda: digits_rows(args.repeats), lambda: resnet_rows(args.repeats, args.resnet_steps),
              lambda: [minilm_row(max(5, args.repeats // 3), args.minilm_batches)]]
    for make in makers:
        for r in make():
            rows.append(r)
            print(f"{r['network']:13s} FLOPs {r['flops_ratio']:.3f} params {r['params_ratio']:.3f} speed-up "
                  f"{r['speedup']:.2f}x {r['speedup_rounds']} {r['metric']} {r['fidelity_fp32']:.4f} -> "
                  f"{r['fidelity_pruned']:.4f} -> {r['fidelity_recovered']:.4f}", flush=True)
        if args.json:  # after every network: a run stopped part-way keeps what it measured
            out = {"schema": "bitladder.prune-groups/1", "command": "OMP_NUM_THREADS=1 " + " ".join(
                       ["python", "benchmarks/prune_groups.py", *(a for a in sys.argv[1:] if a != args.note)]),
                   "machine": machine(), "allocator": allocator,
                   "configs": {"digits": CONFIG.to_dict(), "resnet-style": CONFIG.to_dict(),
                               "latency-aware": LATENCY.to_dict(), "latency-aware, simd": SIMD.to_dict(),
                               "minilm": MINILM.to_dict()},
                   "notes": [*([args.note] if args.note else []),
                             "FLOPs are torch FlopCounterMode counts (matmuls, convolutions, attention); element-wise "
                             "ops are not counted",
                             "speedup: median over rounds (speedup_rounds) of median latencies; the prunings of "
                             "a network run interleaved with the original in every round",
                             "importance_lost: the removed units' scores (each group's mean is 1), per network"],
                   "rows": rows}
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(out, indent=1) + "\n")

if __name__ == "__main__":
    main()
