"""MiniLM compressed by structure, recovered by distillation: one run, one table.

    python benchmarks/minilm_compress.py [--epochs 5] [--lr 2e-4] [--train 0] [--hint 1] [--out docs/results/minilm-compress]

Rows: fp32; 25 % of the attention heads and FFN neurons of every layer removed (Taylor importance, on the
1,024 calibration-half training sentences of the spec), without and with distillation, and the distilled
one quantised to int8; the FFN factorised by SVD to half its parameters (rank by that budget), without
and with distillation; the same ranks re-factored data-aware ("whitened": ``factorize(..., calib=)``, on the
spec's 512 calibration sentences), without and with distillation.

Distillation: the trainer's cosine loss against the fp32 model, plus (``--hint``) its hint loss on every
transformer block's hidden states (pruning and SVD keep the hidden size, so they line up), on
``corpus.training_sentences`` (standard-library docstring sentences, disjoint from the 256 eval
sentences; ``--train N`` takes the first N, 0 all). Training batches hold 32 sentences of similar length
(sorted by token count, cut at ``--max-length``; the trainer shuffles the batch order every epoch). The
teacher's outputs and hidden states are computed once (stored in fp16). The student trains without
dropout and with its word-embedding table frozen (neither compression touches it).

Every row is saved as an artifact (with its recorded structure), loaded back from the built-in factory
alone and evaluated from the loaded copy: "MB" is that file. MACs count Linear layers on the latency
batch (32 sentences; attention score products are not Linear and are not counted). Latency ratio:
fp32 / this, medians of interleaved runs on the latency batch.
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
from bitladder.methods.train.distill import Hints
from bitladder.methods.train.trainer import Train, fit
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency
from bitladder.pipeline.measure.macs import count_macs
from bitladder.zoo import corpus, minilm
from bitladder.nn.select import run

FFN = ["*.intermediate.dense", "*.layer.*.output.dense"]
HINT_LAYERS = ("encoder.encoder.layer.[0-9]",)  # each block's output (hidden states)


def length_batches(sentences: list[str], max_length: int, batch: int = 32) -> list[dict]:
    """Sentences sorted by token count, then cut into batches (little padding: about 3x faster)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm.model_dir())
    ids = tok(sentences, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(sentences)), key=lambda i: (len(ids[i]), i))
    out = []
    for i in range(0, len(order), batch):
        enc = tok([sentences[j] for j in order[i : i + batch]], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
        out.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


class Precomputed(nn.Module):
    """The teacher's outputs (and the hidden states of ``hint_layers``) on the training batches, computed
    once; replayed through identity modules of the same names, so the trainer's hint hooks see them."""

    def __init__(self, teacher: nn.Module, batches: list[dict], hint_layers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.table: dict[int, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        hints = Hints(teacher, hint_layers) if hint_layers else None
        try:
            with torch.no_grad():
                for b in batches:
                    out = run(teacher, b).clone()
                    hidden = {k: v.to(torch.float16) for k, v in hints.out.items()} if hints else {}
                    self.table[b["input_ids"].data_ptr()] = (out, hidden)
        finally:
            if hints:
                hints.close()
        for name in next(iter(self.table.values()))[1]:
            parent = self
            for part in name.split(".")[:-1]:
                if part not in parent._modules:
                    parent.add_module(part, nn.Module())
                parent = parent._modules[part]
            parent.add_module(name.split(".")[-1], nn.Identity())

    def forward(self, input_ids: torch.Tensor, **_) -> torch.Tensor:
        out, hidden = self.table[input_ids.data_ptr()]
        for name, h in hidden.items():
            self.get_submodule(name)(h.float())
        return out


@torch.no_grad()
def prepare(student: nn.Module) -> nn.Module:
    """No dropout (the teacher is deterministic) and the word embeddings frozen."""
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    student.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    return student


def distil(student: nn.Module, batches: list[dict], teacher: nn.Module, train: Train) -> tuple[nn.Module, float]:
    t0 = time.perf_counter()
    fit(prepare(student), batches, None, train, teacher=teacher, metric="cosine",
        on_epoch=lambda e, loss: print(f"  epoch {e}: loss {loss:.4f}, {time.perf_counter() - t0:.0f} s",
                                       file=sys.stderr, flush=True))
    return student, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--hint", type=float, default=1.0, help="weight of the hidden-state hint loss (0: none)")
    ap.add_argument("--train", type=int, default=0, help="training sentences (0: all of corpus.training_sentences)")
    ap.add_argument("--max-length", type=int, default=64, help="tokens per training sentence")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (training time is reported on one)")
    ap.add_argument("--skip-plain-svd", action="store_true", help="distil only the whitened SVD")
    ap.add_argument("--out", default="docs/results/minilm-compress", help="writes OUT.json and OUT.txt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    hint_layers = HINT_LAYERS if args.hint > 0 else ()
    train = Train(epochs=args.epochs, lr=args.lr, hint=args.hint, hint_layers=hint_layers)
    prune_cfg = HeadFFNPrune(heads=0.25, ffn=0.25, importance="taylor", batches=8)
    fresh = spec.fresh_model()

    sentences = corpus.training_sentences(args.train or None)
    batches = length_batches(sentences, args.max_length)
    t0 = time.perf_counter()
    teacher = Precomputed(spec.model, batches, hint_layers)
    teacher_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pruned, report = prune_heads_ffn(spec.model, prune_cfg, spec.train_batches)
    prune_s = time.perf_counter() - t0
    head = (f"{'variant':32s} {'params':>9s} {'GMACs':>7s} {'MB':>7s} {'x fp32':>7s} {'cos mean':>8s} "
            f"{'cos min':>8s} {'kNN@10':>7s} {'train s':>8s}")
    lines, rows = [head], []
    print(head, flush=True)
    data = {"sentences": len(sentences), "batches": len(batches), "batch": 32, "max_length": args.max_length,
            "source": "corpus.training_sentences", "teacher_s": teacher_s,
            "threads": torch.get_num_threads()}
    result = {"schema": "bitladder.compress/1", "model": "minilm", "metric": "cosine",
              "prune": prune_cfg.to_dict(), "prune_s": prune_s, "lowrank": LowRank(param_ratio=0.5).to_dict(),
              "train": train.to_dict(), "train_data": data, "rows": rows}
    foot = [f"pruning: {prune_cfg.to_dict()}, {prune_s:.0f} s; (heads, FFN neurons) per layer before/after: "
            f"{sorted(set(report['heads'].values()))} / {sorted(set(report['ffn'].values()))}",
            f"distillation: {train.to_dict()}; no dropout, word embeddings frozen",
            f"training data: {len(sentences)} sentences (corpus.training_sentences, disjoint from the 256 eval "
            f"sentences) in {len(batches)} length-sorted batches of 32, <= {args.max_length} tokens, "
            f"{args.epochs} epochs; teacher outputs{' and hidden states' if hint_layers else ''} computed once "
            f"in {teacher_s:.0f} s (not in 'train s'); {torch.get_num_threads()} torch thread(s)",
            "whitened: the plain SVD's ranks, factors from the SVD of W L where X^T X = L L^T over the FFN inputs "
            "of the fp32 model on the 512 calibration sentences (no training)",
            "latency ratios are noisy: the 2-core machine was shared with other timing jobs during this run"]
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
        pruned_d, secs = distil(copy.deepcopy(pruned), batches, teacher, train)
        measure("heads+FFN -25% + distil", pruned_d, train_s=secs)
        measure("heads+FFN -25% + distil + int8", pruned_d, bitladder.quantize(pruned_d, Int(bits=8)), secs)
        svd = factorize(spec.model, LowRank(param_ratio=0.5), include=FFN, exclude=["*.attention.*"])
        measure("SVD FFN 1/2", svd)
        t0 = time.perf_counter()
        wsvd = factorize(spec.model, LowRank(param_ratio=0.5), include=FFN, exclude=["*.attention.*"],
                         calib=spec.calib_batches)  # same ranks, data-aware factors
        result["whiten_s"] = time.perf_counter() - t0
        measure("SVD FFN 1/2 whitened", wsvd)
        wsvd_d, secs = distil(copy.deepcopy(wsvd), batches, teacher, train)
        measure("SVD FFN 1/2 whitened + distil", wsvd_d, train_s=secs)
        if not args.skip_plain_svd:
            svd_d, secs = distil(copy.deepcopy(svd), batches, teacher, train)
            measure("SVD FFN 1/2 + distil", svd_d, train_s=secs)
    print(*foot, sep="\n")


if __name__ == "__main__":
    main()
