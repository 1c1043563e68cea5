"""Knowledge distillation: soft-target KL at temperature T (scaled by T^2, Hinton et al. 2015) plus
the hard-label loss, and a small trainer for classifiers (fixed seed, AdamW, cosine schedule); a hint
loss on intermediate hidden states (FitNets, Romero et al. 2015) captured by forward hooks.

>>> import torch
>>> t = torch.tensor([[2.0, 0.0]])
>>> float(distill_loss(t, t, torch.tensor([0]), temperature=2.0, alpha=1.0))
0.0
"""

from __future__ import annotations

import fnmatch
import functools

import torch
from torch import nn

from bitladder.errors import BitladderError


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor | None,
                 temperature: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    """alpha * T² * KL to the teacher's softened outputs + (1 - alpha) * cross-entropy (KL only without target)."""
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


class Hints:
    """Outputs of the modules whose names match ``patterns`` (fnmatch globs), kept by forward hooks at
    every call (the first element when a module returns a tuple); ``close()`` removes the hooks."""

    def __init__(self, model: nn.Module, patterns: tuple[str, ...]) -> None:
        names = [n for n, _ in model.named_modules() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not names:
            raise BitladderError(f"hint_layers {list(patterns)} match no module of {type(model).__name__}")
        self.out: dict[str, torch.Tensor] = {}
        self._hooks = [model.get_submodule(n).register_forward_hook(functools.partial(self._keep, n))
                       for n in names]

    def _keep(self, name: str, _module: nn.Module, _args: tuple, out) -> None:
        self.out[name] = out[0] if isinstance(out, tuple) else out

    def close(self) -> None:
        """Remove the forward hooks."""
        for h in self._hooks:
            h.remove()


def hint_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the MSE between hidden states, each divided by the teacher's mean square
    (scale-free, so layers with large activations do not dominate)."""
    if student.keys() != teacher.keys():
        raise BitladderError(f"hint layers differ: student {sorted(student)}, teacher {sorted(teacher)}")
    terms = [nn.functional.mse_loss(student[k], teacher[k]) / teacher[k].pow(2).mean().clamp(min=1e-12)
             for k in teacher]
    return torch.stack(terms).mean()
