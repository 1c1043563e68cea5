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
import math
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


def per_group(groups: list, ratio: float, round_to: int = 1) -> dict:
    """Each group loses ``ratio`` of its units (at least one stays), least important first; with ``round_to``,
    what stays is rounded up to whole multiples of ``round_to`` channels."""
    out = {}
    for g in groups:
        step = _step(g, round_to)
        kept = g.n - min(int(ratio * g.n), g.n - 1)
        kept = min(g.n, -(-kept // step) * step)
        if kept < g.n:
            out[g.key] = g.scores.topk(kept).indices.sort().values
    return out


def _step(g, round_to: int) -> int:
    """The units whose ``g.width`` channels each make a whole multiple of ``round_to`` channels."""
    return round_to // math.gcd(round_to, g.width)


def _steps(g, cap: float, round_to: int) -> list[tuple[int, int]]:
    """(first, last) positions in ``g``'s ascending order of each removable chunk: every chunk leaves a
    multiple of ``round_to`` channels in each member (units of ``g.width`` channels), within the cap."""
    step = _step(g, round_to)
    limit = min(g.n - 1, int(cap * g.n))
    out, kept = [], g.n
    while True:
        nxt = (kept - 1) // step * step
        if nxt < 1 or g.n - nxt > limit:
            return out
        out.append((g.n - kept, g.n - nxt))
        kept = nxt


def order(groups: list, cap: float, weights: list[float] | None = None,
          round_to: int = 1) -> list[tuple[object, tuple[int, ...], int]]:
    """(group key, units, group size) chunks from least to most important over all groups, within the caps;
    a chunk is one unit, or with ``round_to`` > 1 the units that bring each member to the next lower multiple
    of ``round_to`` channels (SIMD kernels pad a count to their vector width: 21 channels cost 24).
    ``weights`` (one per group, mean 1): each unit's score is divided by its group's, so units whose removal
    saves more (:func:`latency_weights`) go first at equal importance."""
    w = weights or [1.0] * len(groups)
    chunks = []
    for i, g in enumerate(groups):
        ranked = g.scores.argsort(stable=True).tolist()
        for j, (a, b) in enumerate(_steps(g, cap, round_to)):
            units = ranked[a:b]
            chunks.append((float(g.scores[units].mean()) / w[i], i, j, (g.key, tuple(units), g.n)))
    return [c[-1] for c in sorted(chunks, key=lambda c: c[:3])]


def plan(seq: list, k: int) -> dict:
    """The keep-indices that remove the first ``k`` chunks of ``seq``."""
    removed: dict[object, set[int]] = {}
    sizes = {}
    for key, units, n in seq[:k]:
        removed.setdefault(key, set()).update(units)
        sizes[key] = n
    return {key: keep_of(sizes[key], r) for key, r in removed.items()}


def lost(groups: list, keep: dict) -> float:
    """The importance ``keep`` removes: the removed units' scores (mean 1 per group), summed."""
    total = 0.0
    for g in groups:
        if g.key in keep:
            total += float(g.scores.sum() - g.scores[keep[g.key]].sum())
    return total


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


def prefixes(model: nn.Module, apply: Callable, seq: list, goal: float, cost: Callable[[nn.Module], int],
             tol: float = 0.0, rounds: int = 8) -> list[tuple[dict, int]]:
    """(keep-indices, measured cost) of the shortest prefix of ``seq`` whose pruned copy costs <= ``goal``
    (the whole of ``seq`` when none does); when that lands more than ``tol`` below the goal, the chunk that
    crossed it (a coarse one: a head, a convolution group) is put back and the search runs again, up to
    ``rounds`` times. Every round's prefix, in order."""
    def at(s: list, k: int) -> int:
        m = copy.deepcopy(model)
        apply(m, plan(s, k))
        return cost(m)

    out = []
    for _ in range(rounds):
        k, c = _bisect(at, seq, goal)
        out.append((plan(seq, k), c))
        if c > goal or c >= goal - tol or k == 0:
            break
        seq = seq[: k - 1] + seq[k:]
    return out


def search(model: nn.Module, apply: Callable, seq: list, goal: float, cost: Callable[[nn.Module], int],
           tol: float = 0.0, rounds: int = 8):
    """(keep-indices, measured cost) of the :func:`prefixes` round that lands closest under ``goal`` (or, when
    none reaches it, the cheapest)."""
    return closest(prefixes(model, apply, seq, goal, cost, tol, rounds), goal)


def closest(found: list[tuple[dict, int]], goal: float) -> tuple[dict, int]:
    """The candidate that costs the most within ``goal``, or the cheapest when none is within it."""
    under = [p for p in found if p[1] <= goal]
    return max(under, key=lambda p: p[1]) if under else min(found, key=lambda p: p[1])


@torch.no_grad()
def fastest(model: nn.Module, apply: Callable, groups: list, found: list[tuple[dict, int]], goal: float, example,
            slack: float = 0.05, rounds: int = 3, repeats: int = 15) -> tuple[dict, int]:
    """Of the candidates under ``goal`` whose removed importance (:func:`lost`) is within ``slack`` of the
    least, the one that runs fastest on ``example`` here: all run interleaved in ``rounds`` rounds of
    ``repeats`` calls each, ranked by the sum of their per-round medians."""
    under = [p for p in found if p[1] <= goal]
    if len(under) < 2:
        return closest(found, goal)
    least = min(lost(groups, k) for k, _ in under)
    fair = [p for p in under if lost(groups, p[0]) <= (1 + slack) * least + 1e-9]
    if len(fair) < 2:
        return fair[0]
    nets = []
    for keep, _ in fair:
        m = copy.deepcopy(model)
        apply(m, keep)
        call(m, example)  # warm: first calls pick kernels and allocate
        nets.append(m)
    total = [0.0] * len(nets)
    for _ in range(rounds):
        times = [[] for _ in nets]
        for _ in range(repeats):
            for i, m in enumerate(nets):
                times[i].append(_seconds(m, example))
        for i, t in enumerate(times):
            total[i] += statistics.median(t)
    return fair[min(range(len(nets)), key=total.__getitem__)]


@torch.no_grad()
def _seconds(model: nn.Module, example) -> float:
    t = time.perf_counter()
    call(model, example)
    return time.perf_counter() - t


@torch.no_grad()
def latency_weights(model: nn.Module, apply: Callable, groups: list, example, cap: float,
                    repeats: int = 25, round_to: int = 1) -> list[float]:
    """Per group, the measured time one unit's removal saves, relative to the mean over groups: each group
    loses about half its units (a whole number of ``round_to`` chunks, within ``cap``) on a copy, which runs
    interleaved with the original on ``example`` (the median of ``repeats`` paired differences: a pair shares
    the host's noise). A group whose removal saves nothing measurable weighs 1 % of the mean."""
    saved = []
    for g in groups:
        ends = [b for _, b in _steps(g, cap, round_to)]
        if not ends:
            saved.append(0.0)
            continue
        k = min(ends, key=lambda b: (abs(b - g.n // 2), b))
        m = copy.deepcopy(model)
        apply(m, {g.key: g.scores.topk(g.n - k).indices.sort().values})
        for net in (model, m):  # warm: first calls pick kernels and allocate
            call(net, example)
        diffs = [_seconds(model, example) - _seconds(m, example) for _ in range(repeats)]
        saved.append(max(statistics.median(diffs), 0.0) / k)
    mean = sum(saved) / max(len(saved), 1)
    if mean <= 0:
        return [1.0] * len(groups)
    saved = [max(v, 0.01 * mean) for v in saved]  # floored before normalising, so the weights' mean stays 1
    mean = sum(saved) / len(saved)
    return [v / mean for v in saved]
