"""Test networks for grouped structured pruning: a ResNet-style net with a residual block holding a depthwise
and a grouped convolution, a concatenation of two odd-width branches and an attention block; and random
small residual / concat nets for the property test."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bitladder.methods.prune import handlers


class SelfAttention(nn.Module):
    """Multi-head self-attention over (batch, tokens, dim) that reshapes with -1 heads (so heads can go)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (lin(x).view(b, n, -1, self.head_dim).transpose(1, 2) for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


handlers.register(SelfAttention, handlers.Attention())


class Block(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 3x3 grouped (4 groups), 1x1 project, plus the input."""

    def __init__(self, c: int, hidden: int = 48, groups: int = 4) -> None:
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(c, hidden, 1, bias=False), nn.BatchNorm2d(hidden)
        self.dw, self.bn2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False), nn.BatchNorm2d(hidden)
        self.gc, self.bn3 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(hidden)
        self.project, self.bn4 = nn.Conv2d(hidden, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.expand(x)))
        h = F.relu(self.bn2(self.dw(h)))
        h = F.relu(self.bn3(self.gc(h)))
        return F.relu(x + self.bn4(self.project(h)))


class ResNetish(nn.Module):
    """stem -> residual block -> two odd-width branches concatenated -> 1x1 fuse -> attention over the
    pixels (residual, pre-LayerNorm) -> pool -> Linear. Input (N, 3, 16, 16), 10 classes."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
        self.block = Block(width, hidden=2 * width)
        self.pool = nn.MaxPool2d(2)
        self.branch_a, self.branch_b = nn.Conv2d(width, 13, 3, padding=1), nn.Conv2d(width, 19, 1)
        self.bn_cat = nn.BatchNorm2d(32)
        self.fuse = nn.Conv2d(32, 32, 1)
        self.norm, self.attn = nn.LayerNorm(32), SelfAttention(32, heads=4)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.block(F.relu(self.bn(self.stem(x)))))
        x = F.relu(self.bn_cat(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)))
        x = self.fuse(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = t + self.attn(self.norm(t))
        x = t.transpose(1, 2).reshape(b, c, h, w)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnetish() -> ResNetish:
    """A seeded ResNetish in eval mode with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    m = ResNetish()
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


class Random(nn.Module):
    """A chain of ``kinds`` ("res": residual 1x1 pair, "cat": two branches of widths (a, b) concatenated,
    "dw": depthwise 3x3 with a residual) over (N, c, 6, 6), then flatten into a Linear."""

    def __init__(self, c: int, kinds: list[tuple]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, c, 3, padding=1)
        self.kinds, layers = kinds, []
        for kind, a, b in kinds:
            if kind == "cat":
                layers.append(nn.ModuleList([nn.Conv2d(c, a, 1), nn.Conv2d(c, b, 3, padding=1), nn.Conv2d(a + b, c, 1)]))
            elif kind == "dw":
                layers.append(nn.ModuleList([nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c)]))
            else:
                layers.append(nn.ModuleList([nn.Conv2d(c, a, 1), nn.Conv2d(a, c, 1)]))
        self.layers = nn.ModuleList(layers)
        self.fc = nn.Linear(c * 36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for (kind, _, _), mods in zip(self.kinds, self.layers):
            if kind == "cat":
                x = F.relu(mods[2](torch.cat([F.relu(mods[0](x)), mods[1](x)], 1)))
            elif kind == "dw":
                x = x + mods[1](mods[0](x))
            else:
                x = F.relu(x + mods[1](F.relu(mods[0](x))))
        return self.fc(x.flatten(1))
