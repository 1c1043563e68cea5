"""What a pruning choice costs, measured: FLOPs (torch's FlopCounterMode on the example: matmuls,
convolutions, attention) and parameters; and the choice itself, per group or globally under a budget.

A global budget removes the least important units over all groups, one prefix of that order at a time, and
bisects on its length: each candidate is pruned on a copy and measured, so the target is met on the real
model, not on a cost model. A group never loses more than ``cap`` of its units and always keeps one.

>>> from torch import nn
>>> flops(nn.Linear(4, 3), torch.randn(2, 4))  # 2 rows x 4 x 3 multiply-adds, 2 FLOPs each
48
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def call(model: nn.Module, example):
    """``model`` on ``example``: a tensor, a tuple of positional inputs or a dict of keyword inputs."""
    if isinstance(example, dict):
        return model(**example)
    return model(*example) if isinstance(example, tuple) else model(example)


def head(example, rows: int = 2):
    """The first ``rows`` rows of every tensor of ``example`` (FLOP ratios do not depend on the batch)."""
    if isinstance(example, dict):
        return {k: v[:rows] for k, v in example.items()}
    return tuple(v[:rows] for v in example) if isinstance(example, tuple) else example[:rows]


@torch.no_grad()
def flops(model: nn.Module, example) -> int:
    """FLOPs of one forward pass on ``example``, as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        call(model, example)
    return int(counter.get_total_flops())


def params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())


def measure(model: nn.Module, example, target: str) -> int:
    """FLOPs ("flops") or parameters (anything else) of ``model``."""
    return flops(model, example) if target == "flops" else params(model)


def keep_of(n: int, removed: set[int]) -> torch.Tensor:
    """Indices 0..n-1 without ``removed``."""
    return torch.tensor([u for u in range(n) if u not in removed], dtype=torch.long)


def per_group(groups: list, ratio: float) -> dict:
    """Each group loses ``ratio`` of its units (at least one stays), least important first."""
    out = {}
    for g in groups:
        k = min(int(ratio * g.n), g.n - 1)
        if k:
            out[g.key] = g.scores.topk(g.n - k).indices.sort().values
    return out


def order(groups: list, cap: float, weights: list[float] | None = None) -> list[tuple[object, int, int]]:
    """(group key, unit, group size) from least to most important over all groups, within the caps.
    ``weights`` (one per group, mean 1): each unit's score is divided by its group's, so units whose removal
    saves more (:func:`latency_weights`) go first at equal importance."""
    w = weights or [1.0] * len(groups)
    units = sorted((float(s) / w[i], i, u) for i, g in enumerate(groups) for u, s in enumerate(g.scores.tolist()))
    taken = [0] * len(groups)
    out = []
    for _, i, u in units:
        g = groups[i]
        if taken[i] < min(g.n - 1, int(cap * g.n)):
            taken[i] += 1
            out.append((g.key, u, g.n))
    return out


def plan(seq: list, k: int) -> dict:
    """The keep-indices that remove the first ``k`` units of ``seq``."""
    removed: dict[object, set[int]] = {}
    sizes = {}
    for key, u, n in seq[:k]:
        removed.setdefault(key, set()).add(u)
        sizes[key] = n
    return {key: keep_of(sizes[key], r) for key, r in removed.items()}


def _bisect(at: Callable[[list, int], int], seq: list, goal: float) -> tuple[int, int]:
    lo, hi = 0, len(seq)
    best = at(seq, hi)
    if best > goal:
        return hi, best
    while lo < hi:
        mid = (lo + hi) // 2
        c = at(seq, mid)
        if c <= goal:
            hi, best = mid, c
        else:
            lo = mid + 1
    return hi, best


def search(model: nn.Module, apply: Callable, seq: list, goal: float, cost: Callable[[nn.Module], int],
           tol: float = 0.0, rounds: int = 8):
    """(keep-indices, measured cost) of the shortest prefix of ``seq`` whose pruned copy costs <= ``goal``
    (the whole of ``seq`` when none does). When that lands more than ``tol`` below the goal, the unit that
    crossed it (a coarse one: a head, a convolution group) is put back and the search runs again."""
    def at(s: list, k: int) -> int:
        m = copy.deepcopy(model)
        apply(m, plan(s, k))
        return cost(m)

    best = None
    for _ in range(rounds):
        k, c = _bisect(at, seq, goal)
        if best is None or (best[1] > goal and c < best[1]) or goal >= c > best[1]:
            best = (plan(seq, k), c)
        if c > goal or c >= goal - tol or k == 0:
            break
        seq = seq[: k - 1] + seq[k:]
    return best


@torch.no_grad()
def _seconds(model: nn.Module, example) -> float:
    t = time.perf_counter()
    call(model, example)
    return time.perf_counter() - t


@torch.no_grad()
def latency_weights(model: nn.Module, apply: Callable, groups: list, example, cap: float,
                    repeats: int = 25) -> list[float]:
    """Per group, the measured time one unit's removal saves, relative to the mean over groups: each group
    loses half its units (within ``cap``) on a copy, which runs interleaved with the original on ``example``
    (the median of ``repeats`` paired differences: a pair shares the host's noise). A group whose removal
    saves nothing measurable weighs 1 % of the mean."""
    saved = []
    for g in groups:
        k = min(g.n // 2, int(cap * g.n), g.n - 1)
        if k < 1:
            saved.append(0.0)
            continue
        m = copy.deepcopy(model)
        apply(m, {g.key: g.scores.topk(g.n - k).indices.sort().values})
        for net in (model, m):  # warm: first calls pick kernels and allocate
            call(net, example)
        diffs = [_seconds(model, example) - _seconds(m, example) for _ in range(repeats)]
        saved.append(max(statistics.median(diffs), 0.0) / k)
    mean = sum(saved) / max(len(saved), 1)
    if mean <= 0:
        return [1.0] * len(groups)
    return [max(v / mean, 0.01) for v in saved]
