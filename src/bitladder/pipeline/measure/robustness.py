"""Fidelity under perturbed inputs: the compressed model and fp32 see the same perturbed batch.

Tensor inputs get Gaussian noise (``level`` x the batch's standard deviation) and, as out-of-range
input, the batch scaled by ``1 + 10 x level`` (beyond anything calibration saw). Token inputs get a
fraction ``level`` of their tokens replaced by random vocabulary ids, and as out-of-range input by the
rarest ids (the top of the vocabulary). Classifiers report accuracy of both models; embedders the mean
cosine of the compressed model to fp32 on the same perturbed input.

>>> import torch
>>> x = torch.arange(12.0).reshape(4, 3)
>>> bool((perturb(x, 0.5, "noise", 0) != x).all()), perturb(x, 0.1, "range", 0).max().item()
(True, 22.0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.zoo.spec import ModelSpec

KINDS = ("noise", "range")
RARE_TOKENS = 2000  # out-of-range tokens come from the last ids of the vocabulary


def perturb(batch: Any, level: float, kind: str, seed: int, vocab: int = 30522) -> Any:
    """A perturbed copy of ``batch``: ``kind`` "noise" or "range" at ``level`` (see the module docstring), seeded."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(batch, torch.Tensor):
        if kind == "noise":
            return batch + level * batch.float().std() * torch.randn(batch.shape, generator=g)
        return batch * (1 + 10 * level)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    special = (ids == ids[:, :1]) | (ids == 0) | (mask == 0)  # [CLS], padding
    last = mask.sum(1, keepdim=True) - 1
    special |= torch.arange(ids.shape[1]).unsqueeze(0) == last  # [SEP]
    hit = (torch.rand(ids.shape, generator=g) < level) & ~special
    low = 1000 if kind == "noise" else vocab - RARE_TOKENS
    new = torch.randint(low, vocab, ids.shape, generator=g)
    return {**batch, "input_ids": torch.where(hit, new, ids)}


def _vocab(model: nn.Module) -> int:
    emb = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    return emb[0].num_embeddings if emb else 30522


def robustness(spec: ModelSpec, model: nn.Module, levels: list[float]) -> list[dict]:
    """One row per (kind, level): fp32 and compressed fidelity on identical perturbed inputs."""
    vocab = _vocab(spec.model)
    rows = []
    for kind in KINDS:
        for level in levels:
            batches = [perturb(b, level, kind, seed=i, vocab=vocab) for i, b in enumerate(spec.eval_batches)]
            ref = outputs(spec.model, batches)
            out = outputs(model, batches)
            fp32 = fidelity(spec, ref, ref)["fidelity"]
            got = fidelity(spec, out, ref)
            rows.append({"kind": kind, "level": level, "fp32_fidelity": fp32, "fidelity": got["fidelity"],
                         "cos_min": got["cos_min"]})
    return rows
