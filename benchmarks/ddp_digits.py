"""int2 QAT of the digits CNN with teacher distillation, in one process or under torchrun (DDP, gloo on CPU).

    python benchmarks/ddp_digits.py --epochs 8
    python -m torch.distributed.run --standalone --nproc-per-node 2 benchmarks/ddp_digits.py --epochs 8

The same ``fit`` call runs in both: under torchrun each rank trains on every N-th batch and DDP averages
the gradients (so an epoch is N times fewer, N times larger steps). Rank 0 prints one JSON line: the
world size, fp32 and int2 accuracy on the 450 test images, and the training time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bitladder.methods.train import ddp
from bitladder.methods.train.qat import QAT, convert, prepare_qat
from bitladder.methods.train.trainer import Train, fit
from bitladder.zoo import digits


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def replicas_identical(model: torch.nn.Module, w: ddp.World) -> bool:
    """Every rank ends with the same weights (DDP kept the replicas in step)."""
    if w.size == 1:
        return True
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    lo, hi = flat.clone(), flat.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    return bool(torch.equal(lo, hi))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    w = ddp.world()
    data = digits.load_data()
    teacher = digits.pretrained(data)
    xs, ys = digits.train_batches(data)
    student = prepare_qat(teacher, QAT(bits=args.bits))
    t0 = time.perf_counter()
    fit(student, xs, ys, Train(epochs=args.epochs, lr=args.lr, seed=args.seed), teacher=teacher)
    seconds = time.perf_counter() - t0
    q = convert(student)
    same = replicas_identical(student, w)
    if w.main:
        print(json.dumps({"world": w.size, "epochs": args.epochs, "bits": args.bits,
                          "fp32_accuracy": accuracy(teacher, data["x_test"], data["y_test"]),
                          "accuracy": accuracy(q, data["x_test"], data["y_test"]),
                          "train_seconds": round(seconds, 2), "test_images": len(data["y_test"]),
                          "replicas_identical": same}), flush=True)
    ddp.close(w)


if __name__ == "__main__":
    main()
