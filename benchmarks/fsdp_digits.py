"""QAT with teacher distillation sharded with FSDP2 (or DDP) under torchrun: fidelity and the parameter +
optimiser-state bytes each rank holds, against one process. digits: int2 QAT of the CNN, accuracy on the 450
test images; tinylm: int4 QAT of the causal LM distilled from its float self on the calibration text,
next-token agreement with the float model on held-out text.

    python benchmarks/fsdp_digits.py --json docs/results/fsdp-digits.json     # all runs, then the file
    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/fsdp_digits.py --distributed fsdp

With ``--json`` the script launches itself five times (digits: one process, 2 processes with ddp, 2 with fsdp;
tinylm: one process, 2 with fsdp) and writes one row per run. Without it, it is one run: rank 0 prints one
JSON line with the world size, the fidelity, each rank's local bytes (``to_local()`` of DTensor parameters and
optimiser state, measured after the last epoch) and whether the ranks ended with identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bitladder.methods.train import ddp, shards
from bitladder.methods.train.qat import QAT, convert, prepare_qat
from bitladder.methods.train.trainer import Train, fit
from bitladder.zoo import digits
from ddp_digits import replicas_identical  # a sibling script: run as a script, its folder is on sys.path


def _digits() -> tuple:
    data = digits.load_data()
    xs, ys = digits.train_batches(data)
    return digits.pretrained(data), xs, ys, "accuracy", [data["x_test"]], data["y_test"]


def _tinylm() -> tuple:
    from bitladder.zoo import causal_lm

    spec = causal_lm.spec()
    return spec.model, spec.train_batches, None, "perplexity", spec.eval_batches[:2], None


MODELS = {"digits": _digits, "tinylm": _tinylm}  # teacher, batches, labels, metric, test inputs, test labels


def one_run(args: argparse.Namespace) -> None:
    w = ddp.world()
    teacher, xs, ys, metric, test_x, test_y = MODELS[args.model]()
    student = prepare_qat(teacher, QAT(bits=args.bits))
    held: dict[str, int] = {}
    t0 = time.perf_counter()
    fit(student, xs, ys, Train(epochs=args.epochs, lr=args.lr, seed=args.seed, distributed=args.distributed),
        teacher=teacher, metric=metric, probe=lambda m, opt: held.update(shards.local_bytes(m, opt)))
    seconds = time.perf_counter() - t0
    ranks = [held]
    if w.size > 1:
        ranks = [None] * w.size
        torch.distributed.all_gather_object(ranks, held)
    same = replicas_identical(student, w)
    q = convert(student)
    with torch.no_grad():  # accuracy on the labels, or agreement with the teacher's next token
        hits = [(q(x).argmax(-1) == (test_y if test_y is not None else teacher(x).argmax(-1))) for x in test_x]
    fid = float(torch.cat([h.reshape(-1) for h in hits]).float().mean())
    if w.main:
        sys.stdout.write(json.dumps({
            "model": args.model, "world": w.size, "distributed": args.distributed if w.size > 1 else "none",
            "epochs": args.epochs, "bits": args.bits, "lr": args.lr, "fidelity": fid, "metric": metric,
            "test_items": sum(h.numel() for h in hits),
            "param_bytes": [r["params"] for r in ranks], "optim_bytes": [r["optim"] for r in ranks],
            "rank_bytes": [r["params"] + r["optim"] for r in ranks], "train_seconds": round(seconds, 2),
            "replicas_identical": same, "params_plain": all(type(p) is torch.nn.Parameter
                                                            for p in student.parameters())}) + "\n")
    ddp.close(w)


def all_runs(args: argparse.Namespace) -> None:
    from bitladder.pipeline.measure.machine import machine

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    rows = []
    runs = (("digits", args.epochs, args.bits, args.lr, ("ddp", "fsdp")), ("tinylm", 2, 4, 1e-3, ("fsdp",)))
    for model, epochs, bits, lr, modes in runs:
        me = [str(Path(__file__).resolve()), "--model", model, "--epochs", str(epochs), "--bits", str(bits),
              "--lr", str(lr)]
        first = len(rows)
        for cmd in ([sys.executable, *me], *([*launch, *me, "--distributed", m] for m in modes)):
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(next(x for x in out.stdout.splitlines() if x.startswith("{"))))
        one = rows[first]
        for r in rows[first:]:
            r["variant"] = f"{r['world']} process{'es' if r['world'] > 1 else ''}, {r['distributed']}"
            r["bytes_vs_one_process"] = round(max(r["rank_bytes"]) / one["rank_bytes"][0], 4)
            r["drop_pt"] = round((one["fidelity"] - r["fidelity"]) * 100, 2)
    doc = {"schema": "bitladder.fsdp-digits/1",
           "command": "python benchmarks/fsdp_digits.py --json docs/results/fsdp-digits.json",
           "machine": machine(), "rows": rows,
           "notes": ["rank_bytes: parameters + optimiser state this rank holds after the last epoch (AdamW: two "
                     "moments per parameter, and a step count); bytes_vs_one_process: the larger rank over one "
                     "process", "train_seconds on a shared 2-core machine: noisy, and 2 ranks share the 2 cores",
                     "drop_pt: fidelity points below the one-process run of the same model (digits: accuracy; "
                     "tinylm: next-token agreement with the float model on 2 held-out batches of 16x128 tokens)",
                     "under 2 processes an epoch is half as many steps on the same data (each rank takes every "
                     "other batch)"]}
    Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--distributed", default="fsdp", choices=["ddp", "fsdp"])
    ap.add_argument("--model", default="digits", choices=list(MODELS))
    ap.add_argument("--json", help="run all three configurations and write the results here")
    args = ap.parse_args()
    all_runs(args) if args.json else one_run(args)


if __name__ == "__main__":
    main()
