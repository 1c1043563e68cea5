import time

import torch
from torch import nn

from bitladder.methods.prune.budget import flops, latency_weights, order, plan, search
from bitladder.methods.prune.sources import Group


def test_flops_are_counted_by_torch():
    conv = nn.Conv2d(2, 4, 3, padding=1)
    assert flops(conv, torch.randn(1, 2, 5, 5)) == 2 * 4 * 2 * 9 * 25


def test_order_is_global_and_respects_the_caps():
    g = [Group("a", 4, torch.tensor([0.1, 0.2, 0.3, 0.4]), ["a"]), Group("b", 2, torch.tensor([0.05, 0.9]), ["b"])]
    seq = order(g, cap=0.5)
    assert seq == [("b", 0, 2), ("a", 0, 4), ("a", 1, 4)]
    keep = plan(seq, 2)
    assert keep["b"].tolist() == [1] and keep["a"].tolist() == [1, 2, 3]


def test_search_puts_back_a_coarse_unit_that_overshoots():
    # cost = sum of the kept sizes; unit ("big", 0) is worth 10, the small ones 1 each
    sizes = {"big": 10, "small": 1}
    seq = [("big", 0, 2)] + [("small", u, 12) for u in range(11)]
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
    """A forward whose time is set by the units each group keeps: group a costs 1 ms a unit, b 0.05 ms."""

    def __init__(self):
        super().__init__()
        self.units = {"a": 8, "b": 8}

    def forward(self, x):
        time.sleep(1e-3 * self.units["a"] + 5e-5 * self.units["b"])
        return x


def test_latency_weights_measure_what_each_group_saves():
    groups = [Group("a", 8, torch.arange(8.0), ["a"]), Group("b", 8, torch.arange(8.0), ["b"])]
    apply = lambda m, keep: m.units.update({k: len(v) for k, v in keep.items()})
    w = latency_weights(_Sleeper(), apply, groups, torch.zeros(1), cap=0.9, repeats=5)
    assert len(w) == 2 and sum(w) / 2 == 1.0
    assert w[0] > 5 * w[1]  # 1 ms a unit against 0.05 ms: a sleep, not the host's speed, sets the margin
