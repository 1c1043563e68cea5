import pytest
import torch
from torch import nn

from bitladder import BitladderError
from bitladder.methods.quantize.mixed import allocate, apply_assignment, sensitivity
from bitladder.pipeline.ladder.rungs import parse_rung

CANDIDATES = {r: parse_rung(r) for r in ("int8", "int4-g32", "int2-g32-asym")}


def model_with_a_fragile_layer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    with torch.no_grad():
        m[4].weight.mul_(5)  # the output layer dominates the output error
    return m


def test_sensitivity_orders_rungs_and_layers():
    m = model_with_a_fragile_layer()
    x = [torch.randn(256, 32)]
    table = sensitivity(m, CANDIDATES, x)
    assert set(table) == {"0", "2", "4"}
    for layer in table.values():
        assert layer["int8"]["divergence"] < layer["int4-g32"]["divergence"] < layer["int2-g32-asym"]["divergence"]
        assert layer["int8"]["sqnr_db"] > layer["int4-g32"]["sqnr_db"] > layer["int2-g32-asym"]["sqnr_db"]


def test_allocation_meets_budget_and_ranks_among_the_best_assignments():
    import itertools

    m = model_with_a_fragile_layer()
    x = [torch.randn(256, 32)]
    table = sensitivity(m, CANDIDATES, x)
    budget = 3.5
    numel = {n: r["int8"]["numel"] for n, r in table.items()}
    total = sum(numel.values())

    def avg(a):
        return sum(table[n][r]["bits_per_weight"] * numel[n] for n, r in a.items()) / total

    xt = torch.randn(512, 32)

    def error(a):
        with torch.no_grad():
            return float((apply_assignment(m, a, CANDIDATES)(xt) - m(xt)).pow(2).mean())

    greedy = allocate(table, budget_bits=budget)
    assert avg(greedy) <= budget
    feasible = [dict(zip(table, combo)) for combo in itertools.product(CANDIDATES, repeat=len(table))]
    errors = sorted(error(a) for a in feasible if avg(a) <= budget)
    assert error(greedy) <= errors[len(errors) // 4]  # among the best quarter of all feasible choices
    assert greedy["4"] != "int2-g32-asym"  # the fragile layer is protected


def test_unreachable_budget_says_the_lowest():
    m = model_with_a_fragile_layer()
    table = sensitivity(m, CANDIDATES, [torch.randn(64, 32)])
    with pytest.raises(BitladderError, match="lowest reachable is 2.5"):
        allocate(table, budget_bits=1.0)
