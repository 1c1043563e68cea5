"""Fidelity metrics by name: each maps (outputs, fp32 outputs, targets) to a result dict.

Every metric returns ``fidelity`` (higher is better: the ladder's drop and tune's limit read it) and the
keys every caller reads (``cos_min``, ``knn10``; None where they do not apply); extra keys are the
metric's own. :data:`METRICS` has one entry per name in :data:`bitladder.zoo.spec.METRICS`.

>>> import torch
>>> logits = torch.tensor([[[0.0, 9.0], [9.0, 0.0], [0.0, 9.0]]])   # one sequence, vocabulary 2
>>> r = perplexity(logits, logits, torch.tensor([[0, 1, 0]]))
>>> r["fidelity"], round(r["perplexity"], 3)
(1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

IGNORE = -100  # a target id never scored (padding), as in torch's cross_entropy


def knn_agreement(ref: torch.Tensor, out: torch.Tensor, k: int = 10) -> float:
    """Mean overlap of each row's top-k cosine neighbours (itself excluded) under ref and out."""
    def topk(e: torch.Tensor) -> torch.Tensor:
        e = nn.functional.normalize(e.float(), dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(min(k, len(e) - 1), dim=1).indices

    a, b = topk(ref), topk(out)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(dim=2).float().sum(dim=1)
    return float(hits.mean() / a.shape[1])


def accuracy(out: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor | None) -> dict:
    """Classification accuracy against ``targets``."""
    acc = float((out.argmax(dim=-1) == targets).float().mean())
    return {"fidelity": acc, "cos_min": None, "knn10": None}


def cosine(out: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor | None) -> dict:
    """Mean and min cosine of each output row to fp32's, and top-10 neighbour agreement."""
    cos = nn.functional.cosine_similarity(out.flatten(1).double(), ref.flatten(1).double(), dim=-1)
    return {"fidelity": float(cos.mean()), "cos_min": float(cos.min()), "knn10": knn_agreement(ref, out)}


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of each next token (position t predicts t+1; IGNORE targets skipped)."""
    v = logits.shape[-1]
    return float(nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v).double(), targets[:, 1:].reshape(-1),
                                             ignore_index=IGNORE))


def perplexity(out: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor) -> dict:
    """Causal LMs: ``fidelity`` is top-1 next-token agreement with fp32 (a drop is a loss, as for the other
    metrics), with ``perplexity`` on the held-out ``targets`` (token ids, shape of ``out`` less the vocabulary)
    and ``fp32_perplexity`` beside it."""
    keep = targets[:, 1:] != IGNORE
    same = (out[:, :-1].argmax(-1) == ref[:, :-1].argmax(-1))[keep]
    return {"fidelity": float(same.float().mean()), "cos_min": None, "knn10": None,
            "perplexity": math.exp(_nll(out, targets)), "fp32_perplexity": math.exp(_nll(ref, targets))}


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], dict]] = {
    "accuracy": accuracy, "cosine": cosine, "perplexity": perplexity}
