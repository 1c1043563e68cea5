import torch
from torch import nn

from bitladder.methods.prune.groups import Spaces, apply, unit_scores


def test_coupling_takes_the_coarsest_units_and_keeps_the_first_reason():
    sp = Spaces()
    a, b, c = sp.new(12), sp.new(12), sp.new(6)
    sp.freeze(b, "first")
    sp.couple(a, b)
    sp.freeze(a, "second")
    sp.couple(a, c, units=3)
    assert sp.units(a) == 3 and sp.width(a) == 4 and sp.width(c) == 2
    assert sp.reason[sp.find(c)] == "first" and len(sp.roots()) == 1


def test_apply_slices_each_axis_once_over_concatenated_segments():
    lin = nn.Linear(5, 2)
    m = nn.ModuleDict({"fc": lin})
    sp = Spaces()
    a, b = sp.new(2), sp.new(3)  # fc reads [a (2) | b (3)]
    sp.add("fc", "in", 0, 1, a)
    sp.add("fc", "in", 2, 1, b)
    w = lin.weight.detach().clone()
    apply(m, sp, {sp.find(b): torch.tensor([0, 2])})
    assert torch.equal(lin.weight, w[:, [0, 1, 2, 4]])


def test_scores_are_normalised_per_member_and_averaged_per_unit():
    m = nn.ModuleDict({"a": nn.Linear(2, 4), "b": nn.Linear(4, 1)})
    with torch.no_grad():
        m["a"].weight.copy_(torch.tensor([[1.0, 1], [2, 2], [3, 3], [2, 2]]))
        m["b"].weight.fill_(5.0)
    sp = Spaces()
    s = sp.new(4)
    sp.add("a", "out", 0, 1, s)
    sp.add("b", "in", 0, 1, s)
    score = unit_scores(m, sp, "l1")[s]
    assert torch.allclose(score, (torch.tensor([1.0, 2, 3, 2]) / 2 + 1) / 2)
