"""MiniLM compressed by structure, recovered by distillation: one run, one table.

    python benchmarks/minilm_compress.py [--epochs 8] [--lr 2e-4] [--out docs/results/minilm-compress]

Rows: fp32; 25 % of the attention heads and FFN neurons of every layer removed (Taylor importance),
without and with distillation, and the distilled one quantised to int8; the FFN factorised by SVD to
half its parameters, without and with distillation. Distillation: the trainer's cosine loss against
the fp32 model (its outputs computed once) on the 1,024 training sentences (disjoint from the 256 eval sentences). Every row is
saved as an artifact (with its recorded structure), loaded back from the built-in factory alone and
evaluated from the loaded copy: "bytes" is that file. MACs count Linear layers on the latency batch
(32 sentences; attention score products are not Linear and are not counted). Latency ratio: fp32 /
this, medians of interleaved runs on the latency batch.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import bitladder
from bitladder import Int, LowRank, factorize
from bitladder.io.artifact import load, save
from bitladder.io.structure import describe
from bitladder.methods.prune.transformer import HeadFFNPrune, prune_heads_ffn
from bitladder.methods.train.trainer import Train, fit
from bitladder.pipeline.evaluate import fidelity, outputs, paired_latency
from bitladder.pipeline.macs import count_macs
from bitladder.zoo import minilm
from bitladder.zoo.spec import run

FFN = ["*.intermediate.dense", "*.layer.*.output.dense"]


class Precomputed(nn.Module):
    """The teacher's outputs on the training batches, computed once (the trainer asks per step)."""

    def __init__(self, teacher: nn.Module, batches: list[dict]) -> None:
        super().__init__()
        with torch.inference_mode():
            self.table = {b["input_ids"].data_ptr(): run(teacher, b).clone() for b in batches}

    def forward(self, input_ids: torch.Tensor, **_) -> torch.Tensor:
        return self.table[input_ids.data_ptr()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training batches (smoke runs)")
    ap.add_argument("--out", default="docs/results/minilm-compress", help="writes OUT.json and OUT.txt")
    args = ap.parse_args()
    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    train = Train(epochs=args.epochs, lr=args.lr)
    prune_cfg = HeadFFNPrune(heads=0.25, ffn=0.25, importance="taylor", batches=8)
    fresh = spec.fresh_model()

    batches = spec.train_batches[: args.limit] if args.limit else spec.train_batches
    teacher = Precomputed(spec.model, batches)

    def distil(m):
        t0 = time.perf_counter()
        fit(m, batches, None, train, teacher=teacher, metric="cosine",
            on_epoch=lambda e, loss: print(f"  epoch {e}: loss {loss:.4f}, {time.perf_counter() - t0:.0f} s",
                                           file=sys.stderr, flush=True))
        return m, time.perf_counter() - t0

    t0 = time.perf_counter()
    pruned, report = prune_heads_ffn(spec.model, prune_cfg, batches)
    prune_s = time.perf_counter() - t0
    head = (f"{'variant':32s} {'params':>9s} {'GMACs':>7s} {'MB':>7s} {'x fp32':>7s} {'cos mean':>8s} "
            f"{'cos min':>8s} {'kNN@10':>7s} {'train s':>8s}")
    lines, rows = [head], []
    print(head, flush=True)
    result = {"schema": "bitladder.compress/1", "model": "minilm", "metric": "cosine",
              "prune": prune_cfg.to_dict(), "prune_s": prune_s, "lowrank": LowRank(param_ratio=0.5).to_dict(),
              "train": train.to_dict(), "train_batches": len(batches), "rows": rows}
    foot = [f"pruning: {prune_cfg.to_dict()}, {prune_s:.0f} s; (heads, FFN neurons) per layer before/after: "
            f"{sorted(set(report['heads'].values()))} / {sorted(set(report['ffn'].values()))}",
            f"distillation: {train.to_dict()} on {len(batches)} batches of 32 sentences"]
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:

        def measure(name, float_m, q=None, train_s=0.0):
            m = q if q is not None else float_m
            path = save(m, Path(tmp) / "a.safetensors", source="minilm", structure=describe(float_m, fresh))
            loaded = load(path)  # rebuilt from the built-in factory and the recorded structure
            fid = fidelity(spec, outputs(loaded, spec.eval_batches), ref)
            f, s = paired_latency(spec.model, loaded, spec.latency_batch, args.repeats)
            row = {"variant": name, "params": sum(p.numel() for p in float_m.parameters()),
                   "macs": count_macs(float_m, spec.latency_batch), "bytes_on_disk": path.stat().st_size,
                   "latency_ratio": f / s, "cos_mean": fid["fidelity"], "cos_min": fid["cos_min"],
                   "knn10": fid["knn10"], "train_s": train_s}
            rows.append(row)
            lines.append(f"{name:32s} {row['params']:9d} {row['macs'] / 1e9:7.2f} {row['bytes_on_disk'] / 1e6:7.2f} "
                         f"{f / s:7.2f} {row['cos_mean']:8.4f} {row['cos_min']:8.4f} {row['knn10']:7.3f} "
                         f"{train_s:8.0f}")
            print(lines[-1], flush=True)
            out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")  # after every row
            out.with_suffix(".txt").write_text("\n".join(lines + foot) + "\n")

        measure("fp32", spec.model)
        measure("heads+FFN -25% (taylor)", pruned)
        pruned_d, secs = distil(copy.deepcopy(pruned))
        measure("heads+FFN -25% + distil", pruned_d, train_s=secs)
        measure("heads+FFN -25% + distil + int8", pruned_d, bitladder.quantize(pruned_d, Int(bits=8)), secs)
        svd = factorize(spec.model, LowRank(param_ratio=0.5), include=FFN, exclude=["*.attention.*"])
        measure("SVD FFN 1/2", svd)
        svd_d, secs = distil(copy.deepcopy(svd))
        measure("SVD FFN 1/2 + distil", svd_d, train_s=secs)
    print(*foot, sep="\n")


if __name__ == "__main__":
    main()
