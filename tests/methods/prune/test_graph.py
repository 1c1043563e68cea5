import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bitladder import BitladderError
from bitladder.methods.prune.graph import build

from tests.methods.prune.nets import resnetish


def groups_of(model, x):
    _, sp = build(model, x)
    return sp, {r: [(m.layer, m.axis, m.offset, m.block) for m in sp.members if sp.find(m.space) == r]
                for r in sp.roots()}


def root_of(sp, layer, axis="out"):
    return next(sp.find(m.space) for m in sp.members if m.layer == layer and m.axis == axis)


class Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 5), nn.Linear(5, 2)

    def forward(self, x):
        h = self.a(x)
        return self.d(self.c(self.b(h) + h))


def test_residual_pair_shares_one_index_set():
    sp, g = groups_of(Res(), torch.randn(1, 4))
    r = root_of(sp, "a")
    assert root_of(sp, "b") == r and sp.units(r) == 8 and r not in sp.reason
    assert sorted(g[r]) == [("a", "out", 0, 1), ("b", "in", 0, 1), ("b", "out", 0, 1), ("c", "in", 0, 1)]


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 5, 1), nn.Conv2d(2, 7, 3, padding=1)
        self.bn, self.fc = nn.BatchNorm2d(12), nn.Linear(12 * 4, 3)

    def forward(self, x):
        return self.fc(self.bn(torch.cat([self.a(x), self.b(x)], 1)).flatten(1))


def test_concat_maps_offsets_and_flatten_blocks():
    sp, g = groups_of(Cat(), torch.randn(1, 2, 2, 2))
    ra, rb = root_of(sp, "a"), root_of(sp, "b")
    assert ra != rb and sp.units(ra) == 5 and sp.units(rb) == 7
    assert ("bn", "chan", 5, 1) in g[rb] and ("fc", "in", 5 * 4, 4) in g[rb]  # after flatten: 4 features each
    assert ("bn", "chan", 0, 1) in g[ra] and ("fc", "in", 0, 4) in g[ra]


class DW(nn.Module):
    def __init__(self, groups=6, mult=1):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6 * mult, 3, padding=1, groups=groups)
        self.b = nn.Conv2d(6 * mult, 4, 1)

    def forward(self, x):
        return self.b(torch.relu(self.dw(self.a(x))))


def test_depthwise_couples_in_and_out_channel_for_channel():
    sp, g = groups_of(DW(), torch.randn(1, 3, 4, 4))
    r = root_of(sp, "a")
    assert root_of(sp, "dw") == r and sp.units(r) == 6
    assert {("dw", "in", 0, 1), ("dw", "out", 0, 1), ("b", "in", 0, 1)} <= set(g[r])
    sp, _ = groups_of(DW(mult=2), torch.randn(1, 3, 4, 4))  # channel multiplier 2: each unit owns 2 outputs
    dw_out = next(m.space for m in sp.members if m.layer == "dw" and m.axis == "out")
    assert sp.units(dw_out) == 6 and sp.width(dw_out) == 2


def test_grouped_convolution_couples_whole_groups():
    sp, _ = groups_of(DW(groups=3), torch.randn(1, 3, 4, 4))
    r = root_of(sp, "a")
    assert root_of(sp, "dw") == r and sp.units(r) == 3 and sp.width(next(
        m.space for m in sp.members if m.layer == "dw" and m.axis == "in")) == 2


def test_resnetish_groups_and_attention_heads():
    sp, g = groups_of(resnetish(), torch.randn(1, 3, 16, 16))
    trunk = root_of(sp, "stem")
    assert root_of(sp, "block.project") == trunk  # residual add
    assert sp.units(root_of(sp, "block.expand")) == 4  # expand -> depthwise -> grouped(4): whole groups
    assert root_of(sp, "fuse") == root_of(sp, "attn") and ("norm", "chan", 0, 1) in g[root_of(sp, "fuse")]
    heads = root_of(sp, "attn", "heads")
    assert sp.units(heads) == 4 and sp.width(next(m.space for m in sp.members if m.axis == "heads")) == 8
    assert ("fuse", "in", 13, 1) in g[root_of(sp, "branch_b")]
    assert sp.reason == {root_of(sp, "head"): "its output is the model's output"}


class View(nn.Module):
    def __init__(self, fixed):
        super().__init__()
        self.fixed, self.a, self.b = fixed, nn.Conv2d(1, 4, 1), nn.Linear(16 if fixed else 8, 2)

    def forward(self, x):
        h = self.a(x)
        h = h.view(-1, 16) if self.fixed else h.view(h.shape[0], 2, 8).sum(1)  # 2nd: mixes channels
        return self.b(h)


@pytest.mark.parametrize("fixed, why", [(True, "fixed size"), (False, "splits or mixes the channel dim")])
def test_reshapes_that_would_break_freeze_the_group_with_the_op(fixed, why):
    sp, _ = groups_of(View(fixed), torch.randn(1, 1, 2, 2))
    reason = sp.reason[root_of(sp, "a")]
    assert why in reason and "view" in reason and "\n" not in reason


class Chunky(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 2)

    def forward(self, x):
        u, v = self.a(x).chunk(2, dim=-1)
        return self.b(u * v)


def test_unmodelled_split_freezes_what_it_reaches():
    sp, _ = groups_of(Chunky(), torch.randn(1, 4))
    assert "chunk" in sp.reason[root_of(sp, "a")]


def test_untraceable_layer_is_named():
    class Gate(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    m = nn.Sequential(nn.Linear(3, 3), Gate(), nn.Linear(3, 1))
    with pytest.raises(BitladderError, match=r"cannot trace layer '1' with torch.fx \(TraceError") as e:
        build(m, torch.randn(1, 3))
    assert "\n" not in str(e.value)


def test_add_of_a_tensor_that_cannot_shrink_freezes_the_group():
    class AddInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)) + x)

    sp, _ = groups_of(AddInput(), torch.randn(1, 4))
    assert "x has channels that cannot shrink" in sp.reason[root_of(sp, "a")]
