"""Knowledge distillation: soft-target KL at temperature T (scaled by T^2, Hinton et al. 2015) plus
the hard-label loss, and a small trainer for classifiers (fixed seed, AdamW, cosine schedule).

>>> import torch
>>> t = torch.tensor([[2.0, 0.0]])
>>> float(distill_loss(t, t, torch.tensor([0]), temperature=2.0, alpha=1.0))
0.0
"""

from __future__ import annotations

import torch
from torch import nn

from bitladder.errors import BitladderError


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None,
                 temperature: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    if temperature <= 0:
        raise BitladderError(f"temperature must be > 0, got {temperature}")
    if student.shape != teacher.shape:
        raise BitladderError(f"student outputs {tuple(student.shape)} do not match the teacher's "
                             f"{tuple(teacher.shape)}")
    t = temperature
    soft = nn.functional.kl_div(nn.functional.log_softmax(student / t, -1), nn.functional.softmax(teacher / t, -1),
                                reduction="batchmean") * t * t
    if target is None or alpha >= 1:
        return soft
    return alpha * soft + (1 - alpha) * nn.functional.cross_entropy(student, target)


def train_classifier(student: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: nn.Module | None = None,
                     epochs: int = 30, lr: float = 2e-3, batch: int = 64, temperature: float = 4.0,
                     alpha: float = 0.7, seed: int = 0) -> nn.Module:
    """Train ``student`` on (x, y), distilling from ``teacher`` when given."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    if teacher is not None:
        teacher.eval()
    student.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            out = student(x[idx])
            if teacher is None:
                loss = nn.functional.cross_entropy(out, y[idx])
            else:
                with torch.no_grad():
                    soft = teacher(x[idx])
                loss = distill_loss(out, soft, y[idx], temperature, alpha)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return student.eval()
