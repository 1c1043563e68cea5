"""The balanced split: optimal against brute force, every tensor in one unit, clear errors."""

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.errors import BitladderError
from bitladder.pipeline.parallel.split import balance, owned, unit_bytes


def _brute(sizes, n):
    best = None
    for cuts in itertools.combinations(range(1, len(sizes)), n - 1):
        bounds = [0, *cuts, len(sizes)]
        worst = max(sum(sizes[a:b]) for a, b in zip(bounds, bounds[1:]))
        best = worst if best is None else min(best, worst)
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=9), st.integers(1, 9))
def test_balance_is_contiguous_and_minimises_the_largest_stage(sizes, n):
    if n > len(sizes):
        with pytest.raises(BitladderError, match=f"cannot be split into {n} stages; accepted: 1 to {len(sizes)}"):
            balance(sizes, n)
        return
    ranges = balance(sizes, n)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes) and len(ranges) == n
    assert all(a < b for a, b in ranges) and all(r[1] == s[0] for r, s in zip(ranges, ranges[1:]))
    assert max(sum(sizes[a:b]) for a, b in ranges) == _brute(sizes, n)


def test_zero_stages_is_refused():
    with pytest.raises(BitladderError, match="at least 1, got 0"):
        balance([1, 2], 0)


def test_unit_bytes_counts_each_tensor_once_and_refuses_strays():
    sizes = {"m.embed.weight": 10, "m.layers.1.w": 5, "m.layers.10.w": 7, "head.weight_packed": 3, "head.weight_scale": 1}
    units = [["m.embed"], ["m.layers.1"], ["m.layers.10"], ["head"]]
    assert unit_bytes(sizes, units) == [10, 5, 7, 4]  # layers.1 is not a prefix of layers.10
    assert owned(sizes, ["m.layers.1"]) == ["m.layers.1.w"]
    with pytest.raises(BitladderError, match="tensors outside every pipeline unit .*'extra.bias'"):
        unit_bytes({**sizes, "extra.bias": 2}, units)
