"""MiniLM (all-MiniLM-L6-v2) with ternary or binary transformer blocks, distilled from the fp32 model.

Every Linear layer of the six transformer blocks is trained with QAT (embeddings and the unused pooler stay
fp32) and distilled on the docstring corpus's training sentences (cosine to the teacher's sentence
embedding, optionally plus a hint loss on every block's hidden states; dropout off); the converted, packed model is
then measured on the disjoint eval sentences against the fp32 model: mean and min cosine, top-10
neighbour agreement. Variants:

* ``ternary-lsq``: ternary weights with learned per-channel steps (LSQ), fp32 activations;
* ``ternary-bitnet``: BitNet b1.58: absmean ternary weights, per-token absmax int8 activations;
* ``binary-xnor``: XNOR-Net binary weights (sign * mean|w| per channel), fp32 activations.

Each call measures the named variants and merges them into ``--out`` (JSON) and its ``.txt`` twin.

    .venv/bin/python benchmarks/minilm_lowbit_distill.py --variant ternary-lsq --epochs 8 --lr 2e-4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bitladder.methods.train.qat import QAT, convert, prepare_qat
from bitladder.methods.train.trainer import Train, fit
from bitladder.nn.base import QuantModule
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.zoo import minilm

VARIANTS = {
    "ternary-lsq": QAT(bits="ternary"),
    "ternary-bitnet": QAT(bits="ternary", bitnet=True),
    "binary-xnor": QAT(bits="binary"),
}
TARGETS = {"ternary-lsq": 0.90, "ternary-bitnet": 0.90, "binary-xnor": 0.80}
BLOCKS = ["encoder.encoder.layer.*"]  # the transformer blocks' Linear layers; embeddings and pooler stay fp32
HINTS = ("encoder.encoder.layer.[0-9]",)  # each block's output hidden states


def _round(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def measure(spec, variant: str, cfg: Train, ref: torch.Tensor) -> dict:
    student = prepare_qat(spec.model, VARIANTS[variant], include=BLOCKS)
    for m in student.modules():  # the student fits the teacher's deterministic function: no dropout
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    before = fidelity(spec, outputs(student.eval(), spec.eval_batches), ref)
    losses: list[float] = []

    def on_epoch(epoch: int, loss: float) -> None:
        losses.append(round(loss, 5))
        print(f"  {variant} epoch {epoch + 1}/{cfg.epochs}: loss {loss:.5f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    t0 = time.perf_counter()
    fit(student, spec.train_batches, None, cfg, teacher=spec.model, metric="cosine", on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    packed = convert(student)
    fake = outputs(student, spec.eval_batches)
    out = outputs(packed, spec.eval_batches)
    layers = [m for m in packed.modules() if isinstance(m, QuantModule)]
    return {
        "variant": variant, "config": VARIANTS[variant].__dict__ | {"layers": len(layers)},
        "train": {k: v for k, v in cfg.to_dict().items() if k in ("epochs", "lr", "hint", "hint_layers", "seed")},
        "train_sentences": sum(len(b["input_ids"]) for b in spec.train_batches),
        "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "epoch_losses": losses,
        "before_training": _round(before),
        **_round(fidelity(spec, out, ref)),
        "packed_equals_fake_quant_max_abs": float((out - fake).abs().max()),
        "quantized_bytes": sum(m.qweight.nbytes for m in layers),
        "quantized_weights": sum(m.qweight.numel for m in layers),
        "kernels": sorted({m.kernel for m in layers}),
        "target_cosine": TARGETS[variant],
        "target_met": fidelity(spec, out, ref)["fidelity"] >= TARGETS[variant],
    }


def write(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    keep = [r for r in old if r["variant"] not in {x["variant"] for x in rows}]
    order = list(VARIANTS)
    merged = sorted(keep + rows, key=lambda r: order.index(r["variant"]))
    path.write_text(json.dumps({"schema": "bitladder.minilm-lowbit-distill/1", "model": "minilm", "rows": merged},
                               indent=1) + "\n")
    lines = [f"{'variant':16} {'cos mean':>8} {'cos min':>8} {'knn10':>6} {'before':>7} {'target':>6} "
             f"{'epochs':>6} {'lr':>7} {'hint':>5} {'train s':>8}"]
    for r in merged:
        t = r["train"]
        lines.append(f"{r['variant']:16} {r['fidelity']:8.4f} {r['cos_min']:8.4f} {r['knn10']:6.3f} "
                     f"{r['before_training']['fidelity']:7.4f} {r['target_cosine']:6.2f} {t['epochs']:6d} "
                     f"{t['lr']:7.0e} {t.get('hint', 0.0):5.2f} {r['train_seconds']:8.0f}")
    lines.append(f"({merged[0]['train_sentences']} training sentences, {merged[0]['threads']} CPU threads; "
                 "cosine against the fp32 model on 256 disjoint eval sentences, packed models)")
    lines.append("train s: wall time of fit() on a 2-core machine shared with other jobs (load average 5-12 "
                 "during these runs), so it overstates the time on an idle machine")
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--hint", type=float, default=0.0, help="weight of the hidden-state hint loss")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("docs/results/minilm-lowbit-distill.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    rows = []
    for v in a.variant:
        rows.append(measure(spec, v, Train(epochs=a.epochs, lr=a.lr, hint=a.hint, hint_layers=HINTS if a.hint else ()), ref))
        write(rows, a.out)


if __name__ == "__main__":
    main()
