"""Block-by-block calibration: every layer's collector gets exactly the rows the layer sees, groups of
layers fed one tensor share a collector, and passes stop after the group they serve."""

from __future__ import annotations

import torch
from torch import nn

from bitladder.methods.quantize.calibrate import Collector, blockwise
from bitladder.methods.quantize.gptq import HessianCollector


class Rows(Collector):
    """Keeps every row it is given (a test collector)."""

    def __init__(self, by_input: bool) -> None:
        self.rows: list[torch.Tensor] = []
        self.by_input = by_input

    def update(self, x: torch.Tensor) -> None:
        self.rows.append(x.clone())

    def same_setup(self, other: Collector) -> bool:
        return isinstance(other, Rows)


class Block(nn.Module):
    """q, k, v read one input; o reads their mix; ff reads o's output."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o, self.ff = (nn.Linear(d, d) for _ in range(5))

    def forward(self, x):
        h = torch.tanh(self.q(x)) * self.k(x) + self.v(x)
        return x + self.ff(torch.relu(self.o(h)))


class Net(nn.Module):
    def __init__(self, d: int = 8, n: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def _layer_inputs(net: Net, batches) -> dict[str, torch.Tensor]:
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, []).append(a[0].reshape(-1, a[0].shape[-1])))
             for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for b in batches:
            net(b)
    for h in hooks:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def _run(by_input: bool):
    torch.manual_seed(0)
    net = Net()
    batches = [torch.randn(4, 5, 8) for _ in range(3)]
    want = _layer_inputs(net, batches)  # nothing is changed by apply, so every pass sees the float layers
    got: dict[str, Collector] = {}
    calls = {"ff": 0}
    net.blocks[2].ff.register_forward_hook(lambda *_: calls.__setitem__("ff", calls["ff"] + 1))  # ran to its end
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    blockwise(net, names, batches, lambda n, m: Rows(by_input), lambda n, m, c: got.__setitem__(n, c))
    return want, got, calls["ff"]


def test_every_layer_collects_exactly_its_inputs_in_order():
    for by_input in (False, True):
        want, got, _ = _run(by_input)
        assert set(got) == set(want)
        for n, rows in want.items():
            assert torch.equal(torch.cat(got[n].rows), rows), n


def test_layers_fed_one_tensor_share_one_collector_only_when_it_depends_on_the_input_alone():
    _, shared, _ = _run(True)
    _, apart, _ = _run(False)
    assert shared["blocks.0.q"] is shared["blocks.0.k"] is shared["blocks.0.v"]
    assert shared["blocks.0.o"] is not shared["blocks.0.q"]
    assert len({id(apart[f"blocks.0.{n}"]) for n in "qkv"}) == 3


def test_passes_stop_after_the_group_they_serve():
    # the last block's ff runs on the first batch of the qkv and o passes (which name their group), then on
    # every batch of its own pass and of the pass that advances to the next block; without the stop: 4 x 3
    _, _, ff_calls = _run(True)
    assert ff_calls == 1 + 1 + 3 + 3


def test_hessian_of_shared_collector_equals_the_plain_sum():
    torch.manual_seed(1)
    x = torch.randn(300, 16)
    c = HessianCollector(16)
    for part in x.split(100):
        c.update(part)
    ref = 2 * x.double().T @ x.double() / 300
    assert torch.allclose(c.hessian, ref, rtol=1e-5, atol=1e-6)
    assert c.hessian is c.hessian  # normalised once, in place
    try:
        c.update(x[:10])
    except RuntimeError as e:
        assert "after the Hessian was read" in str(e)
    else:
        raise AssertionError("rows added after reading the Hessian must be refused")


def test_layers_that_see_one_tensor_as_different_rows_keep_their_own_collectors():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    torch.manual_seed(0)
    net = Two()
    got: dict[str, Collector] = {}
    blockwise(net, ["a", "b"], [torch.randn(2, 4, 5, 5) for _ in range(2)],
              lambda n, m: Rows(True), lambda n, m, c: got.__setitem__(n, c))
    assert got["a"] is not got["b"]
    assert got["a"].rows[0].shape[1] == 4 and got["b"].rows[0].shape[1] == 36  # 1x1 and 3x3 unfolds


def test_only_the_group_being_served_gets_collectors():
    # a GPTQ Hessian is K x K float64: making one for every pending layer on every pass held them all at once
    torch.manual_seed(0)
    net = Net()
    batches = [torch.randn(4, 5, 8) for _ in range(3)]
    made: list[str] = []

    def make(n, m):
        made.append(n)
        return Rows(False)

    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    blockwise(net, names, batches, make, lambda n, m, c: None)
    assert sorted(made) == sorted(names)  # one each, on the pass that quantises it


def test_out_of_memory_in_a_calibration_pass_is_said_as_such():
    import pytest

    from bitladder.errors import BitladderError

    class Greedy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(BitladderError, match="out of memory running calibration batch 0.*stream"):
        blockwise(Greedy(), ["lin"], [torch.randn(2, 8)], lambda n, m: Rows(False), lambda n, m, c: None)
