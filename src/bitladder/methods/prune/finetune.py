"""Fine-tune a pruned classifier with its zeros held at zero (masks re-applied after every step)."""

from __future__ import annotations

import torch
from torch import nn

from bitladder.methods.quantize.api import plan


def finetune_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 10, lr: float = 1e-3,
                        batch: int = 64, seed: int = 0) -> nn.Module:
    """AdamW on (x, y) with cross-entropy; every pruned weight stays exactly zero."""
    masks = {n: model.get_submodule(n).weight != 0 for n in plan(model).targets}
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for n, mk in masks.items():
                    model.get_submodule(n).weight.mul_(mk)
    return model.eval()
