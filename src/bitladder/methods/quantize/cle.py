"""Cross-layer equalisation (Nagel et al., 2019, data-free).

For two weighted layers joined only by positively homogeneous ops (ReLU, max-pool, flatten,
identity), channel ``i`` can be scaled down in the first and up in the second without changing the
function: ``W1[i] /= s_i, b1[i] /= s_i, W2[:, i] *= s_i`` with ``s_i = sqrt(r1_i / r2_i)`` (r: the
channel's weight range), which equalises the two ranges and helps per-tensor quantisation.

>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> x = torch.randn(3, 4)
>>> before = m(x)
>>> equalize(m)
1
>>> torch.allclose(before, m(x), atol=1e-5)
True
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from bitladder.methods.quantize.transforms import Pass, Transform, transform

log = logging.getLogger("bitladder")

HOMOGENEOUS = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Identity, nn.Dropout)
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _pairs(seq: nn.Sequential):
    items = list(seq)
    for i, first in enumerate(items):
        if not isinstance(first, WEIGHTED) or getattr(first, "groups", 1) != 1:
            continue
        flatten = False
        for nxt in items[i + 1 :]:
            if isinstance(nxt, nn.Flatten):
                flatten = True
                continue
            if isinstance(nxt, HOMOGENEOUS):
                continue
            if isinstance(nxt, WEIGHTED) and getattr(nxt, "groups", 1) == 1:
                yield first, nxt, flatten
            break


def _sequences(model: nn.Module):
    """Sequential containers, with the parent's consecutive Sequential children joined (flatten between)."""
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            yield m
        kids = [c for c in m.children() if isinstance(c, nn.Sequential)]
        for a, b in zip(kids, kids[1:]):
            yield nn.Sequential(*a, *b)


@torch.no_grad()
def equalize(model: nn.Module, iters: int = 2) -> int:
    """Equalise every eligible pair in place; returns the number of pairs."""
    seen: set[tuple[int, int]] = set()
    for _ in range(iters):
        for seq in _sequences(model):
            for first, second, flat in _pairs(seq):
                c = first.weight.shape[0]
                w2 = second.weight
                if flat:  # second is Linear on a flattened (C, H, W) input
                    if w2.shape[1] % c:
                        continue
                    cols = w2.reshape(w2.shape[0], c, -1)
                    r2 = cols.abs().amax(dim=(0, 2))
                else:
                    if w2.shape[1] != c:
                        continue
                    r2 = w2.abs().transpose(0, 1).reshape(c, -1).amax(1)
                r1 = first.weight.abs().reshape(c, -1).amax(1)
                s = torch.sqrt(r1 / r2.clamp(min=1e-8)).clamp(min=1e-4, max=1e4)
                s = torch.where((r1 > 0) & (r2 > 0), s, torch.ones_like(s))
                first.weight.div_(s.reshape(-1, *[1] * (first.weight.dim() - 1)))
                if first.bias is not None:
                    first.bias.div_(s)
                if flat:
                    second.weight.copy_((cols * s.reshape(1, c, 1)).reshape(w2.shape))
                else:
                    second.weight.mul_(s.reshape(1, c, *[1] * (w2.dim() - 2)))
                seen.add((id(first), id(second)))
    return len(seen)


@transform("equalize")
class Equalize(Transform):
    """Cross-layer equalisation of the float model (``config.equalize``)."""

    order = 10

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(getattr(config, "equalize", False))

    def before(self, p: Pass) -> None:
        log.info("cross-layer equalisation: %d layer pairs", equalize(p.model))
