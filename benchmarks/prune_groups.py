"""Structured pruning by dependency groups at 50 % of the FLOPs: digits CNN, a ResNet-style net (residual,
depthwise, grouped, odd-width concatenation, attention) and MiniLM (heads + FFN), side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/prune_groups.py --json docs/results/prune-groups.json

Per network: FLOPs and parameters of the pruned model over the original (measured: torch's FlopCounterMode
on the same input, parameter counts), bytes of the state dict, the latency speed-up (original / pruned, median
of interleaved runs on the same batch), and fidelity before and after a short recovery: digits is fine-tuned
on its labels (5 epochs), the ResNet-style net (random weights, no data) and MiniLM are distilled from the
original for a few hundred steps; fidelity is accuracy on the test split (digits), the cosine of the logits
to the original's on held-out random inputs (ResNet-style) and the mean cosine of the sentence embeddings on
the evaluation sentences (MiniLM).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the ResNet-style test network lives with the tests

from bitladder.atomic import atomic_path  # noqa: E402
from bitladder.methods.prune.budget import flops, params  # noqa: E402
from bitladder.methods.prune.finetune import finetune_classifier  # noqa: E402
from bitladder.methods.prune.structured import ChannelPrune, prune_channels  # noqa: E402
from bitladder.methods.train.trainer import Train, fit  # noqa: E402
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency  # noqa: E402
from bitladder.pipeline.measure.machine import machine  # noqa: E402

CONFIG = ChannelPrune(ratio=0.5, target="flops")
# latency-aware: the same FLOPs budget, units weighed by the time their group's removal saves on this machine
LATENCY = ChannelPrune(ratio=0.5, target="flops", latency=True)
# MiniLM: taylor importance (self-distillation gradients) keeps 0.66 cosine before recovery against 0.52 for l2
MINILM = ChannelPrune(ratio=0.5, target="flops", importance="taylor")


def state_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


def row(name: str, ref: nn.Module, pruned: nn.Module, report: dict, example, latency_batch, repeats: int,
        metric: str, before: float, after: float, base: float, prune_s: float, recovery: str,
        config: ChannelPrune = CONFIG) -> dict:
    f = flops(pruned, example) / flops(ref, example)
    t_ref, t_new = paired_latency(ref, pruned, latency_batch, repeats=repeats)
    return {"network": name, "target": "50 % FLOPs", "importance": config.importance, "latency_aware": config.latency,
            "flops_ratio": round(f, 4),
            "params_ratio": round(params(pruned) / params(ref), 4),
            "state_bytes_ratio": round(state_bytes(pruned) / state_bytes(ref), 4),
            "latency_ms": round(t_new * 1e3, 3), "fp32_latency_ms": round(t_ref * 1e3, 3),
            "speedup": round(t_ref / t_new, 3), "metric": metric, "fidelity_fp32": round(base, 4),
            "fidelity_pruned": round(before, 4), "fidelity_recovered": round(after, 4),
            "drop_pt": round(100 * (base - after), 2), "recovery": recovery, "prune_s": round(prune_s, 2),
            "pruned": {k: list(v) for k, v in report["pruned"].items()}, "skipped": report["skipped"]}


def digits_row(repeats: int, config: ChannelPrune = CONFIG) -> dict:
    from bitladder.zoo import digits

    spec, data = digits.spec(), digits.load_data()
    x, y = data["x_test"], data["y_test"]
    acc = lambda m: float((m(x).argmax(1) == y).float().mean())
    t = time.perf_counter()
    p, rep = prune_channels(spec.model, config, data["x_train"][:64] if not config.latency else x)
    prune_s = time.perf_counter() - t
    with torch.no_grad():
        before = acc(p)
    finetune_classifier(p, data["x_train"], data["y_train"], epochs=5)
    with torch.no_grad():
        return row("digits" + (" (latency-aware)" if config.latency else ""), spec.model, p, rep, x[:1], x, repeats,
                   "accuracy", before, acc(p), acc(spec.model), prune_s, "fine-tune 5 epochs on labels", config)


def resnet_row(repeats: int, steps: int, config: ChannelPrune = CONFIG) -> dict:
    from tests.methods.prune.nets import resnetish

    m = resnetish()
    g = torch.Generator().manual_seed(1)
    test = torch.randn(256, 3, 16, 16, generator=g)
    cos = lambda p: float(nn.functional.cosine_similarity(p(test), m(test), dim=-1).mean())
    t = time.perf_counter()
    p, rep = prune_channels(m, config, test[:32] if config.latency else test[:8])  # latency: the timed batch
    prune_s = time.perf_counter() - t
    with torch.no_grad():
        before = cos(p)
    batches = [torch.randn(64, 3, 16, 16, generator=g) for _ in range(steps)]
    fit(p, batches, None, Train(epochs=1, lr=2e-3), teacher=m, metric="cosine")
    with torch.no_grad():
        return row("resnet-style" + (" (latency-aware)" if config.latency else ""), m, p, rep, test[:1], test[:32],
                   repeats, "logit cosine", before, cos(p), 1.0, prune_s,
                   f"distil {steps} steps from the original on random inputs", config)


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
    with torch.no_grad():
        return row("minilm", spec.model, p, rep, example, spec.latency_batch, repeats, "embedding cosine",
                   before, after, 1.0, prune_s, f"distil 1 epoch on {batches} batches of 64 sentences", MINILM)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--resnet-steps", type=int, default=300)
    ap.add_argument("--minilm-batches", type=int, default=16)
    ap.add_argument("--note", default="", help="how quiet the host was during the run (recorded in the JSON)")
    args = ap.parse_args()
    rows = []
    makers = [lambda: digits_row(args.repeats), lambda: digits_row(args.repeats, LATENCY),
              lambda: resnet_row(args.repeats, args.resnet_steps),
              lambda: resnet_row(args.repeats, args.resnet_steps, LATENCY),
              lambda: minilm_row(max(5, args.repeats // 3), args.minilm_batches)]
    for make in makers:
        rows.append(make())
        r = rows[-1]
        print(f"{r['network']:13s} FLOPs {r['flops_ratio']:.3f} params {r['params_ratio']:.3f} speed-up "
              f"{r['speedup']:.2f}x {r['metric']} {r['fidelity_fp32']:.4f} -> {r['fidelity_pruned']:.4f} -> "
              f"{r['fidelity_recovered']:.4f}", flush=True)
        if args.json:  # after every row: a run stopped part-way keeps what it measured
            out = {"schema": "bitladder.prune-groups/1", "command": "OMP_NUM_THREADS=1 " + " ".join(
                       ["python", "benchmarks/prune_groups.py", *(a for a in sys.argv[1:] if a != args.note)]),
                   "machine": machine(), "configs": {"digits": CONFIG.to_dict(), "resnet-style": CONFIG.to_dict(),
                                                  "latency-aware": LATENCY.to_dict(), "minilm": MINILM.to_dict()},
                   "notes": [*([args.note] if args.note else []),
                             "FLOPs are torch FlopCounterMode counts (matmuls, convolutions, attention); element-wise "
                             "ops are not counted"],
                   "rows": rows}
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
