"""Where to cut: the stored bytes of each unit, read from the artifact's header, and the contiguous split
into stages that makes the largest stage as small as it can be.

Bytes are the tensors as stored (a 4-bit layer counts its packed codes and scales, not a float weight), so a
mixed-precision artifact is balanced by what each stage really holds.

>>> balance([4, 1, 1, 1, 1, 4], 2)
[(0, 3), (3, 6)]
>>> balance([1, 1, 1], 3)
[(0, 1), (1, 2), (2, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence

from bitladder.errors import BitladderError


def owned(names: Sequence[str], prefixes: Sequence[str]) -> list[str]:
    """The tensor names under any of the module-name ``prefixes``."""
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def unit_bytes(tensor_bytes: dict[str, int], units: list[list[str]]) -> list[int]:
    """Stored bytes of each unit; every tensor must belong to exactly one unit."""
    sizes, seen = [], set()
    for prefixes in units:
        names = owned(tensor_bytes, prefixes)
        seen.update(names)
        sizes.append(sum(tensor_bytes[n] for n in names))
    stray = sorted(set(tensor_bytes) - seen)
    if stray:
        raise BitladderError(f"the artifact has tensors outside every pipeline unit (e.g. {stray[0]!r}); "
                             "it does not match the model's architecture")
    return sizes


def balance(sizes: Sequence[int], n: int) -> list[tuple[int, int]]:
    """``n`` contiguous ranges ``(start, stop)`` over ``sizes``, each non-empty, minimising the largest sum
    (ties: the earliest cut), by dynamic programming over (units, stages)."""
    if n < 1:
        raise BitladderError(f"the number of pipeline stages must be at least 1, got {n}")
    if n > len(sizes):
        raise BitladderError(f"a model of {len(sizes)} pipeline units (embedding, blocks, head) cannot be split "
                             f"into {n} stages; accepted: 1 to {len(sizes)}")
    prefix = [0]
    for s in sizes:
        prefix.append(prefix[-1] + s)
    inf = float("inf")
    # best[k][i]: the smallest possible largest stage when the first i units form k stages
    best = [[inf] * (len(sizes) + 1) for _ in range(n + 1)]
    cut = [[0] * (len(sizes) + 1) for _ in range(n + 1)]
    best[0][0] = 0
    for k in range(1, n + 1):
        for i in range(k, len(sizes) + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    ranges, i = [], len(sizes)
    for k in range(n, 0, -1):
        ranges.append((cut[k][i], i))
        i = cut[k][i]
    return ranges[::-1]
