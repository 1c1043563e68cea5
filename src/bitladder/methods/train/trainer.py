"""One trainer for every training step: fine-tuning, QAT and distillation, classifiers and encoders.

The loss follows the model's metric: classifiers use cross-entropy, or soft-target KL at temperature T
(scaled by T^2) mixed with the hard labels when a teacher is given; embedders (metric "cosine") are
distilled with ``1 - cos(student, teacher)`` per row. Weights that are exactly zero when training starts
(pruned) stay zero. Packed quantised layers are frozen and computed on the dequantised weight so the
gradient reaches the layers before them.

>>> import torch
>>> m = torch.nn.Linear(4, 3)
>>> x, y = [torch.randn(32, 4)], [torch.randint(0, 3, (32,))]
>>> fit(m, x, y, Train(epochs=2), metric="accuracy") is m
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.train.distill import distill_loss
from bitladder.zoo.spec import run

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Train:
    """Epochs over the given batches, optimiser, learning rate, schedule, seed, distillation knobs."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"
    schedule: str = "cosine"
    weight_decay: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) loss against the hard labels
    seed: int = 0
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise BitladderError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise BitladderError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise BitladderError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise BitladderError(f"unknown schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        if self.temperature <= 0:
            raise BitladderError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise BitladderError(f"alpha must be in [0, 1], got {self.alpha}")

    def to_dict(self) -> dict:
        return {"type": "Train", "version": self.version, **asdict(self)}


def loss_for(metric: str, out: torch.Tensor, soft: torch.Tensor | None, target: torch.Tensor | None,
             config: Train) -> torch.Tensor:
    if soft is not None and out.shape != soft.shape:
        raise BitladderError(f"student outputs {tuple(out.shape)} do not match the teacher's {tuple(soft.shape)}")
    if metric == "cosine":
        if soft is None:
            raise BitladderError("training an embedder needs a teacher (cosine distillation)")
        return (1 - nn.functional.cosine_similarity(out, soft, dim=-1)).mean()
    if soft is None:
        if target is None:
            raise BitladderError("training a classifier needs labels or a teacher")
        return nn.functional.cross_entropy(out, target)
    return distill_loss(out, soft, target, config.temperature, config.alpha if target is not None else 1.0)


def _zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) and not bool(w.all()):
            masks[name] = w.detach() != 0
    return masks


def _freeze_packed(model: nn.Module) -> None:
    from bitladder.nn.base import QuantModule

    for m in model.modules():
        if isinstance(m, QuantModule):
            m.set_kernel_policy("dequant-fp32")  # autograd flows through x; the packed weight is fixed


def fit(student: nn.Module, batches: list[Any], targets: list[torch.Tensor] | None, config: Train,
        teacher: nn.Module | None = None, metric: str = "accuracy",
        on_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Train ``student`` in place on ``batches`` (with ``targets`` for classifiers); returns it in eval mode."""
    if not batches:
        raise BitladderError("no training batches")
    if targets is not None and len(targets) != len(batches):
        raise BitladderError(f"{len(batches)} training batches but {len(targets)} target batches")
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    _freeze_packed(student)
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise BitladderError("the model has no trainable parameters (every layer is packed)")
    opt = (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay) if config.optimizer == "adamw"
           else torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs) if config.schedule == "cosine"
             else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))
    masks = _zero_masks(student)
    if teacher is not None:
        teacher.eval()
    student.train()
    for epoch in range(config.epochs):
        total = 0.0
        for i in torch.randperm(len(batches), generator=g).tolist():
            out = run(student, batches[i])
            soft = None
            if teacher is not None:
                with torch.no_grad():
                    soft = run(teacher, batches[i])
            loss = loss_for(metric, out, soft, None if targets is None else targets[i], config)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
            with torch.no_grad():
                for n, mk in masks.items():
                    student.get_submodule(n).weight.mul_(mk)
        sched.step()
        if on_epoch:
            on_epoch(epoch, total / len(batches))
    return student.eval()
