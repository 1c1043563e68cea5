import time

import pytest
import torch
from torch import nn

from bitladder.methods.prune.budget import fastest, flops, latency_weights, lost, order, per_group, plan, search
from bitladder.methods.prune.sources import Group


def test_flops_are_counted_by_torch():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert flops(conv, torch.randn(1, 2, 5, 5)) == 2 * 4 * 2 * 9 * 25


def test_order_is_global_and_respects_the_caps():
    g = [Group("a", 4, torch.tensor([0.1, 0.2, 0.3, 0.4]), ["a"]), Group("b", 2, torch.tensor([0.05, 0.9]), ["b"])]
    seq = order(g, cap=0.5)
    assert seq == [("b", (0,), 2), ("a", (0,), 4), ("a", (1,), 4)]
    keep = plan(seq, 2)
    assert keep["b"].tolist() == [1] and keep["a"].tolist() == [1, 2, 3]


def test_search_puts_back_a_coarse_unit_that_overshoots():
    # cost = sum of the kept sizes; unit ("big", 0) is worth 10, the small ones 1 each
    sizes = {"big": 10, "small": 1}
    seq = [("big", (0,), 2)] + [("small", (u,), 12) for u in range(11)]
    model = nn.Linear(1, 1)
    state = {}
    apply = lambda m, keep: state.update(cost=20 + 12 - sum(sizes[k] * (n - len(keep[k])) for k, n in
                                                             (("big", 2), ("small", 12)) if k in keep))
    keep, cost = search(model, apply, seq, goal=25, cost=lambda m: state["cost"], tol=1)
    assert cost == 25 and "big" not in keep  # 7 small units instead of the big one (cost 22)


def test_weights_put_units_that_save_more_time_first():
    g = [Group("a", 2, torch.tensor([0.2, 0.4]), ["a"]), Group("b", 2, torch.tensor([0.1, 0.3]), ["b"])]
    assert [k for k, _, _ in order(g, cap=0.5)] == ["b", "a"]
    assert [k for k, _, _ in order(g, cap=0.5, weights=[4.0, 1.0])] == ["a", "b"]  # 0.05 < 0.1


class _Sleeper(nn.Module):
    """A forward whose time is set by the units each group keeps: group a costs 5 ms a unit, b 0.05 ms (a's 20 ms
    saving stands above the scheduling delays of a loaded 2-core host; 1 ms a unit once read as no saving)."""

    def __init__(self):
        super().__init__()
        self.units = {"a": 8, "b": 8}

    def forward(self, x):
        time.sleep(5e-3 * self.units["a"] + 5e-5 * self.units["b"])
        return x


def test_latency_weights_measure_what_each_group_saves():
    groups = [Group("a", 8, torch.arange(8.0), ["a"]), Group("b", 8, torch.arange(8.0), ["b"])]
    apply = lambda m, keep: m.units.update({k: len(v) for k, v in keep.items()})
    w = latency_weights(_Sleeper(), apply, groups, torch.zeros(1), cap=0.9, repeats=9)
    assert len(w) == 2 and sum(w) / 2 == pytest.approx(1.0)  # also when b's saving is lost in the noise (floored)
    assert w[0] > 5 * w[1]  # 5 ms a unit against 0.05 ms: a sleep, not the host's speed, sets the margin


def test_round_to_removes_whole_vector_widths():
    # 21 channels cost a SIMD kernel what 24 do: chunks leave 16, then 8 (the cap keeps 4 of 20 at least)
    scores = torch.linspace(0.1, 2.0, 20)
    g = [Group("c", 20, scores, ["c"])]
    seq = order(g, cap=0.8, round_to=8)
    assert [len(u) for _, u, _ in seq] == [4, 8]
    assert seq[0][1] == (0, 1, 2, 3)  # the least important first
    for k in (1, 2):
        assert len(plan(seq, k)["c"]) % 8 == 0
    # a head of 32 channels is a multiple of 8 on its own: one head per chunk
    heads = [Group("h", 12, torch.rand(12), ["h"], width=32)]
    assert all(len(u) == 1 for _, u, _ in order(heads, cap=0.5, round_to=8))
    # a grouped layer's unit of 4 channels: chunks of two units
    assert all(len(u) == 2 for _, u, _ in order([Group("g", 8, torch.rand(8), ["g"], width=4)], 0.9, round_to=8))
    # and per group: 50 % of 20 leaves 10, rounded up to 16
    assert len(per_group(g, 0.5, round_to=8)["c"]) == 16


def test_lost_sums_the_removed_scores():
    g = [Group("a", 4, torch.tensor([0.5, 1.0, 1.5, 1.0]), ["a"]), Group("b", 2, torch.tensor([0.2, 1.8]), ["b"])]
    assert abs(lost(g, {"a": torch.tensor([1, 2]), "b": torch.tensor([1])}) - (0.5 + 1.0 + 0.2)) < 1e-6
    assert lost(g, {}) == 0.0


def test_fastest_takes_the_quickest_fair_candidate():
    # three candidates under the goal: "slow" removes the least importance, "quick" 4 % more (fair),
    # "greedy" 50 % more (not fair, though quickest of all); a sleep sets each one's time
    g = [Group("a", 4, torch.tensor([1.0, 1.0, 1.0, 1.0]), ["a"]), Group("b", 4, torch.tensor([1.0, 1.04, 0.96, 1.0]), ["b"])]
    delay = {("a",): 4e-3, ("b",): 1e-3, ("a", "b"): 0.0}
    apply = lambda m, keep: m.units.update(key=tuple(sorted(keep)))
    slow, quick, greedy = ({"a": torch.tensor([1, 2, 3])}, 10), ({"b": torch.tensor([1, 2, 3])}, 10), \
        ({"a": torch.tensor([1, 2, 3]), "b": torch.tensor([1, 2, 3])}, 8)
    over = ({}, 20)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.units = {"key": ()}

        def forward(self, x):
            time.sleep(delay.get(self.units["key"], 5e-3))
            return x

    assert lost(g, quick[0]) <= 1.05 * lost(g, slow[0]) < lost(g, greedy[0])
    got = fastest(Net(), apply, g, [over, slow, quick, greedy], goal=10, example=torch.zeros(1), rounds=1, repeats=3)
    assert got is quick
    # with one candidate under the goal, it is the answer without timing
    assert fastest(Net(), apply, g, [over, slow], goal=10, example=torch.zeros(1)) is slow


def test_a_group_that_saves_nothing_is_floored_and_the_weights_keep_mean_one():
    groups = [Group("a", 8, torch.arange(8.0), ["a"]), Group("b", 8, torch.arange(8.0), ["b"])]
    apply = lambda m, keep: m.units.update({k: len(v) for k, v in keep.items() if k == "a"})  # b's removal: a no-op
    w = latency_weights(_Sleeper(), apply, groups, torch.zeros(1), cap=0.9, repeats=5)
    assert w[1] < 0.05 and w[0] > 1.9  # b floored at 1 % of the mean (noise of a 2 ms median would be needed to pass 0.05)
    assert sum(w) / 2 == pytest.approx(1.0)
