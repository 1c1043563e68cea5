"""MiniLM at 2-4 bits on text nothing was tuned on, by calibration size: issue 21's fidelity table.

Each row quantises MiniLM's transformer blocks to one rung (embeddings int8 per row, RTN, in every row),
calibrated on the first N sentences (64 / 128 / 512) of the built-in calibration half (``--calib-from kjv``: of
the unseen corpus's calibration half, disjoint from its evaluation verses), and scores the result on two corpora: the built-in evaluation half (docstrings, the development corpus) and the unseen corpus
(zoo.unseen: King James Bible verses, never used to calibrate or choose anything). Rungs are rung strings
(`bitladder ladder --rungs` takes the same), so every row can be rerun from the CLI.

    OMP_NUM_THREADS=2 python benchmarks/lowbit_unseen.py --json docs/results/lowbit-unseen-avx2.json
    OMP_NUM_THREADS=2 python benchmarks/lowbit_unseen.py --calib-from kjv --json docs/results/lowbit-kjv-avx2.json
    OMP_NUM_THREADS=2 python benchmarks/lowbit_unseen.py --calib-from kjv --rungs TUNED --json docs/results/lowbit-kjv-tune-avx2.json

``--rungs TUNED`` names the block-tuned rungs (``-tune``: GPTQ, then block-wise reconstruction).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

import bitladder
from bitladder.atomic import atomic_path
from bitladder import Int
from bitladder.pipeline.ladder.rungs import parse_rung
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.measure.machine import machine
from bitladder.zoo import corpus, minilm, unseen

RUNGS = ("int4-g64-gptq", "int4-g64-asym-gptq", "int3-g64-asym-gptq", "int2-g64-asym-gptq", "int4-g64-gptq-r64",
         "int3-g64-asym-gptq-r64", "int8-a8d", "int8-a8d-r32")
TUNED = ("int4-g64-asym-gptq-tune", "int4-g64-asym-gptq-r64-tune", "int3-g64-asym-gptq-tune",
         "int3-g64-asym-gptq-r64-tune", "int2-g64-asym-gptq-tune", "int2-g64-asym-gptq-r64-tune")
CALIB = (64, 128, 512)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rungs", default=",".join(RUNGS), help="comma-separated rungs, or TUNED")
    ap.add_argument("--calib", default=",".join(map(str, CALIB)), help="calibration sentences per row")
    ap.add_argument("--calib-from", default="docstrings", choices=["docstrings", unseen.NAME],
                    help="calibrate on the built-in corpus (the unseen one stays unseen) or on the unseen corpus's "
                         "calibration half (disjoint from its evaluation verses: the --data protocol)")
    ap.add_argument("--tune-iters", type=int, default=None, help="steps per block of the -tune rungs (default: Tune's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    why = unseen.missing()
    if why:
        raise SystemExit(why)
    spec = minilm.spec()
    sets = {"docstrings": spec.eval_batches, unseen.NAME: spec.unseen_batches}
    refs = {k: outputs(spec.model, b) for k, b in sets.items()}
    start = bitladder.quantize(spec.model, Int(8), include=["*embeddings*"])
    rows = []
    for rung in (TUNED if args.rungs == "TUNED" else args.rungs.split(",")):
        cfg = parse_rung(rung)
        if getattr(cfg, "tune", None) is not None and args.tune_iters:
            cfg = dataclasses.replace(cfg, tune=dataclasses.replace(cfg.tune, iters=args.tune_iters))
        for n in map(int, args.calib.split(",")):
            text = corpus.calibration_sentences(n) if args.calib_from == "docstrings" else unseen.calibration_sentences(n)
            calib = minilm.tokenize(text, by_length=True)
            t0 = time.perf_counter()
            q = bitladder.quantize(start, cfg, exclude=["*embeddings*"], calib=calib if cfg.needs_calibration else None)
            dt = time.perf_counter() - t0
            row = {"rung": rung, **({"tune_iters": cfg.tune.iters} if getattr(cfg, "tune", None) else {}), "calib_from": args.calib_from, "calib_sentences": n if cfg.needs_calibration else 0,
                   "quantize_s": round(dt, 1)}
            for k, b in sets.items():
                f = fidelity(spec, outputs(q, b), refs[k])
                row.update({f"{k}_cos_mean": f["fidelity"], f"{k}_cos_min": f["cos_min"], f"{k}_knn10": f["knn10"]})
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:  # after every row: a long run that stops keeps what it measured
                write(args, rows)
            if not cfg.needs_calibration:
                break


def write(args, rows: list[dict]) -> None:
    with atomic_path(args.json) as tmp:
        tmp.write_text(json.dumps({"schema": "bitladder.lowbit-unseen/1", "command": "OMP_NUM_THREADS=2 python "
                                   + " ".join(sys.argv), "machine": machine(), "model": "minilm",
                                   "unseen_corpus": unseen.DESCRIPTION, "eval_sentences": minilm.EVAL_SENTENCES,
                                   "note": "embeddings int8 (RTN) in every row; rows differ by the blocks' rung and "
                                           "calibration size", "rows": rows}, indent=1))

if __name__ == "__main__":
    main()
