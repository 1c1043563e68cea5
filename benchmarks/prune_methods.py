"""Pruning and low-rank on digits: parameters, MACs, bytes, latency ratio and accuracy, one run.

    python benchmarks/prune_methods.py [--json runs/prune-digits.json]

Every pruned model is fine-tuned (15-20 epochs, zeros held at zero), factorised convs are distilled from
the fp32 model (30 epochs), then each is saved as fp32 and as int4-g32 artifacts; "bytes" is the whole
artifact on disk.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import bitladder
from bitladder import NM, Float, Int, LowRank, Magnitude, factorize
from bitladder.methods.lowrank.conv import ConvFactor, factorize_convs
from bitladder.methods.prune.finetune import finetune_classifier
from bitladder.methods.prune.structured import ChannelPrune, prune_channels
from bitladder.pipeline.measure.evaluate import fidelity, outputs, paired_latency
from bitladder.methods.train.trainer import Train, fit
from bitladder.pipeline.measure.macs import count_macs
from bitladder.zoo import digits


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    spec, data = digits.spec(), digits.load_data()
    ref = outputs(spec.model, spec.eval_batches)
    base = fidelity(spec, ref, ref)["fidelity"]
    x = spec.eval_batches[0]

    def ft(m, epochs=15):
        return finetune_classifier(m, data["x_train"], data["y_train"], epochs=epochs)

    def distil(m, epochs=30):
        return fit(m, spec.train_batches, spec.train_targets, Train(epochs=epochs, lr=2e-3), teacher=spec.model)

    convs = ["features.2", "features.5"]
    variants = {
        "dense fp32": lambda: spec.model,
        "unstructured 80% global": lambda: ft(bitladder.prune(spec.model, Magnitude(0.8, scope="global"))),
        "unstructured 90% global": lambda: ft(bitladder.prune(spec.model, Magnitude(0.9, scope="global"))),
        "N:M 2:4": lambda: ft(bitladder.prune(spec.model, NM(2, 4))),
        "channels 50% (L1)": lambda: ft(prune_channels(spec.model, ChannelPrune(0.5), x[:2])[0], 20),
        "low-rank Linear 50% params": lambda: ft(factorize(spec.model, LowRank(param_ratio=0.5))),
        "Tucker-2 convs 50% params": lambda: distil(factorize_convs(spec.model, ConvFactor(param_ratio=0.5),
                                                                    include=convs)),
        "depthwise-separable convs": lambda: distil(factorize_convs(spec.model, ConvFactor(kind="separable"),
                                                                    include=convs)),
    }
    rows = []
    print(f"{'variant':28s} {'params':>8s} {'MACs':>9s} {'fp32 B':>8s} {'int4 B':>8s} {'x fp32':>7s} {'acc':>7s} "
          f"{'drop pt':>8s} {'int4 drop':>9s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in variants.items():
            m = build().eval()
            acc = fidelity(spec, outputs(m, spec.eval_batches), ref)["fidelity"]
            q4 = bitladder.quantize(m, Int(4, group=32))
            acc4 = fidelity(spec, outputs(q4, spec.eval_batches), ref)["fidelity"]
            b32 = bitladder.save(bitladder.quantize(m, Float("fp32")), Path(tmp) / "a.safetensors").stat().st_size
            b4 = bitladder.save(q4, Path(tmp) / "b.safetensors").stat().st_size
            f, s = paired_latency(spec.model, m, spec.latency_batch, 30)
            row = {"variant": name, "params": sum(p.numel() for p in m.parameters()), "macs": count_macs(m, x),
                   "bytes_fp32": b32, "bytes_int4": b4, "latency_ratio": f / s, "accuracy": acc,
                   "fidelity_drop_pt": 100 * (base - acc), "int4_drop_pt": 100 * (base - acc4)}
            rows.append(row)
            print(f"{name:28s} {row['params']:8d} {row['macs']:9d} {b32:8d} {b4:8d} {f / s:7.2f} {acc:7.4f} "
                  f"{row['fidelity_drop_pt']:8.2f} {row['int4_drop_pt']:9.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"schema": "bitladder.prune/1", "model": "digits", "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
