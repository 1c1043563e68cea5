"""Where static per-tensor W8A8 loses MiniLM's fidelity, and what outlier channels win back.

Every configuration quantises all-MiniLM-L6-v2 (int8 embeddings with a zero point per row, every Linear as
configured) on the built-in calibration sentences and reports the mean cosine of its embeddings to fp32 on the
256 evaluation sentences (disjoint from calibration). ``--per-layer`` adds the sensitivity table: one group of
layers at a time (a block's q/k/v, attention output, FFN up or FFN down) gets static SmoothQuant-0.8
activations while every other Linear stays int8 weight-only, and the cosine loss it adds is listed. Fidelity
only: no timing (the bench does that, side by side).

    OMP_NUM_THREADS=2 python benchmarks/static_outliers.py --out docs/results/static-outliers-minilm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bitladder
from bitladder import Act, Int
from bitladder.atomic import atomic_path
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo import minilm

CONFIGS = {  # name -> [(which layers, config)], applied in order; None: every Linear not yet quantised
    "W8 weight-only": [(None, Int(8))],
    "static SQ 0.8": [(None, Int(8, act=Act(smoothquant=0.8)))],
    "static SQ 0.5": [(None, Int(8, act=Act(smoothquant=0.5)))],
    "static SQ 0.8 + Hadamard 64": [(None, Int(8, act=Act(smoothquant=0.8), rotate=64))],
    **{f"static SQ 0.5 + {k} outlier channels": [(None, Int(8, act=Act(smoothquant=0.5, outliers=k)))]
       for k in (4, 8, 16, 32)},
    "static, no SQ + 16 outlier channels": [(None, Int(8, act=Act(outliers=16)))],
    "static SQ 0.8; FFN down SQ 0.5 + 16 outlier channels": [
        ("down", Int(8, act=Act(smoothquant=0.5, outliers=16))), (None, Int(8, act=Act(smoothquant=0.8)))],
    "static SQ 0.8; FFN down weight-only": [("down", Int(8)), (None, Int(8, act=Act(smoothquant=0.8)))],
}


def _groups(model) -> dict[str, list[str]]:
    """{"0:qkv": [...], "0:attention out": [...], "0:FFN up": [...], "0:FFN down": [...], ...} and "down"."""
    out: dict[str, list[str]] = {}
    for n in bitladder.plan(model).targets:
        if ".layer." not in n:
            continue
        blk = n.split(".layer.")[1].split(".")[0]
        kind = ("qkv" if n.rsplit(".", 1)[1] in ("query", "key", "value") else "attention out"
                if "attention.output" in n else "FFN up" if "intermediate" in n else "FFN down")
        out.setdefault(f"{blk}:{kind}", []).append(n)
        if kind == "FFN down":
            out.setdefault("down", []).append(n)
    return out


def build(spec, parts, groups):
    m = bitladder.quantize(spec.model, Int(8, symmetric=False), include=["*embeddings*"])
    done = ["*embeddings*"]
    for which, cfg in parts:
        if which is None:
            m = bitladder.quantize(m, cfg, exclude=done, calib=spec.calib_batches)
        else:
            m = bitladder.quantize(m, cfg, include=groups[which], calib=spec.calib_batches)
            done += groups[which]
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-layer", action="store_true", help="also the per-group sensitivity table")
    a = ap.parse_args()
    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    groups = _groups(spec.model)

    def cos(m) -> float:
        return round(fidelity(spec, outputs(m, spec.eval_batches), ref)["fidelity"], 6)

    rows = []
    for name, parts in CONFIGS.items():
        t = time.perf_counter()
        rows.append({"config": name, "cos_mean": cos(build(spec, parts, groups)),
                     "quantize_s": round(time.perf_counter() - t, 1)})
        print(json.dumps(rows[-1]), flush=True)
    res = {"command": "python benchmarks/static_outliers.py" + (" --per-layer" if a.per_layer else ""),
           "machine": machine(), "rows": rows}
    if a.per_layer:
        base = rows[0]["cos_mean"]
        res["per_layer_loss_added"] = {
            g: round(base - cos(build(spec, [(g, Int(8, act=Act(smoothquant=0.8))), (None, Int(8))], groups)), 6)
            for g in groups if g != "down"}
    with atomic_path(Path(a.out)) as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
