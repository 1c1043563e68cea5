"""What the ladder needs to know about a model: how to build it, what to feed it, how to score it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

METRICS = ("accuracy", "cosine", "perplexity")


@dataclass
class ModelSpec:
    """A float model with its evaluation data.

    ``eval_batches``: inputs (a tensor, or a dict of tensors passed as keywords), one per batch.
    ``targets``: class labels for ``metric="accuracy"``; for ``metric="cosine"`` fidelity is the
    cosine of each output row to the fp32 model's (embedders: mean, min and top-10 neighbour
    agreement); for ``metric="perplexity"`` (causal LMs: outputs are logits, batch x tokens x vocabulary)
    ``targets`` are the evaluation token ids and fidelity is top-1 next-token agreement with fp32, with
    perplexity beside it. ``latency_batch`` is the input timed for the latency ratio. ``train_batches`` (and
``train_targets`` for classifiers) feed fine-tuning and distillation; they never overlap the eval data.
    """

    name: str
    model: nn.Module
    metric: str
    eval_batches: list[Any]
    latency_batch: Any
    targets: torch.Tensor | None = None
    calib_batches: list[Any] = field(default_factory=list)
    train_batches: list[Any] = field(default_factory=list)  # for fine-tuning / distillation steps
    train_targets: list[torch.Tensor] | None = None  # labels per train batch (classifiers)
    default_rungs: list[str] = field(default_factory=list)
    source: str | None = None  # a built-in name that rebuilds ``model`` when an artifact is loaded
    factory: Callable[[], nn.Module] | None = None
    # a second evaluation set of another kind of text (zoo.unseen), scored like ``eval_batches``; empty where
    # the corpus is not installed, and ``unseen_missing`` says why
    unseen_batches: list[Any] = field(default_factory=list)
    unseen_corpus: str | None = None
    unseen_missing: str | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.metric in ("accuracy", "perplexity") and self.targets is None:
            raise ValueError(f"metric {self.metric!r} needs targets")
        self.model.eval()

    def fresh_model(self) -> nn.Module:
        """A new float model of the same architecture (for loading an artifact into)."""
        return self.factory().eval() if self.factory else copy.deepcopy(self.model)


