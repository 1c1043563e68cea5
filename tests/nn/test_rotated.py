"""Block-Hadamard rotation of a layer's input: orthogonal, exact in float, recorded as structure."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitladder
from bitladder.errors import BitladderError
from bitladder.io.structure import describe, rebuild
from bitladder.kernels import FbgemmW8A8Kernel
from bitladder.kernels import hadamard as fast
from bitladder.methods.quantize.methods import Act
from bitladder.nn.rotated import Rotated, block_for, hadamard


@given(st.integers(0, 8))
def test_hadamard_is_orthogonal_and_symmetric(k):
    h = hadamard(2**k)
    assert torch.allclose(h @ h.T, torch.eye(2**k, dtype=torch.float64), atol=1e-12)
    assert torch.equal(h, h.T)


@given(st.integers(1, 4096), st.sampled_from([1, 2, 8, 64, 128]))
def test_block_is_the_largest_power_of_two_dividing_the_width(width, largest):
    b = block_for(width, largest)
    assert width % b == 0 and b <= largest and b & (b - 1) == 0
    assert b * 2 > largest or width % (b * 2)


def test_bad_blocks_and_layers_are_refused():
    with pytest.raises(BitladderError, match="power of two"):
        hadamard(12)
    with pytest.raises(BitladderError, match="input width"):
        Rotated.around(nn.Linear(24, 4), 16)


@settings(deadline=None, max_examples=20)
@given(st.sampled_from([(384, 128), (1536, 64), (96, 32), (64, 8)]), st.integers(0, 2**16))
def test_rotation_keeps_the_float_function(shape, seed):
    width, block = shape
    torch.manual_seed(seed)
    lin = nn.Linear(width, 16)
    x = torch.randn(2, 3, width) * torch.rand(width) * 10  # uneven channels, as real activations are
    want = lin(x)
    r = Rotated.around(lin, block)
    assert torch.allclose(r(x), want, atol=1e-4, rtol=1e-4)


def test_an_outlier_channel_is_spread_over_its_block():
    x = torch.zeros(1, 64)
    x[0, 5] = 100.0
    lin = nn.Linear(64, 4)
    r = Rotated.around(lin, 64)
    seen = {}
    r.layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    r(x)
    assert torch.allclose(seen["x"].abs(), torch.full((1, 64), 100.0 / 8))  # 100 / sqrt(64) everywhere


def test_readers_of_one_tensor_share_one_rotated_copy():
    a, b = Rotated.around(nn.Linear(32, 4), 32), Rotated.around(nn.Linear(32, 4), 32)
    seen = []
    for r in (a, b):
        r.layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 32)
    a(x), b(x)
    assert seen[0] is seen[1]


def test_rotation_is_recorded_and_rebuilt_without_stored_matrix():
    ref = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    rot = nn.Sequential(Rotated.around(nn.Linear(64, 32), 64), nn.ReLU(), nn.Linear(32, 4))
    rot[2].load_state_dict(ref[2].state_dict())
    recs = describe(rot, ref)
    assert [(r["name"], r["type"], r["args"]["block"]) for r in recs] == [("0", "Rotated", 64)]
    assert "0.h" not in rot.state_dict()  # rebuilt from the block size, not stored
    again = rebuild(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4)), recs)
    again.load_state_dict(rot.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(again(x), rot(x))


class _TwoReaders(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 32), nn.Linear(64, 32)

    def forward(self, x):
        return self.a(x) + self.b(x)


@pytest.mark.skipif(not fast.installed(), reason="the C kernels were not built (no compiler at install)")
def test_static_int_layers_rotate_and_quantise_their_input_in_one_pass(monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx2")  # 7-bit weights: the integer GEMM on every CPU
    torch.manual_seed(3)
    q = bitladder.quantize(_TwoReaders(), bitladder.Int(7, act=Act(), rotate=64), calib=[torch.randn(256, 64)])
    a, b = q.a, q.b
    b.layer.set_act("uint8", a.layer.act_scale, a.layer.act_zero_point, "minmax")  # one grid: one shared input
    x = torch.randn(300, 64)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert a.layer.kernel == "int8-w8a8-onednn-static" and not hasattr(x, "_bitladder_rotated")  # no float copy
    assert x._bitladder_prep[0][-1] == 64  # the rotated codes, made once for both readers
    for r, y in ((a, ya), (b, yb)):
        ref = torch.nn.functional.linear(r.layer.prepare_input(fast.fwht(x, 64)), r.layer.weight(), r.layer.bias)
        assert torch.allclose(y, ref, atol=1e-4)
    with torch.enable_grad():  # autograd: the matrix form, the same function
        assert torch.allclose(a(x.clone().requires_grad_()), ya, atol=1e-3)


@pytest.mark.skipif(not fast.installed(), reason="the C kernels were not built (no compiler at install)")
@pytest.mark.parametrize("cpu", ["avx2", "avx512-vnni"])
def test_per_token_layers_take_rotated_codes_from_one_c_call(cpu, monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", cpu)  # 7-bit activations without VNNI, 8-bit with (as presented)
    torch.manual_seed(4)
    q = bitladder.quantize(_TwoReaders(), bitladder.Int(8, act=Act(dynamic="token"), rotate=64))
    x = torch.randn(300, 64) * torch.linspace(0.1, 10, 300)[:, None]  # tokens of very different ranges
    with torch.no_grad():
        y = q.a(x)
        unfused = q.a.layer(fast.fwht(x, 64))  # the same layer on the rotated input: the kernel's own prepare
    assert q.a.layer.kernel == "int8-w8a8-onednn-token" and x._bitladder_prep[0][-1] == 64
    want = torch.nn.functional.linear(x, q.a.layer.weight().mm(hadamard(64).float()), q.a.layer.bias)
    assert float((y - want).norm() / want.norm()) < 0.02  # int8 weights, 7-8-bit activations per token
    assert float((y - unfused).norm() / unfused.norm()) < 2e-3  # same grid; rounding of y / r differs


@pytest.mark.skipif(not fast.installed(), reason="the C kernels were not built (no compiler at install)")
def test_per_token_layers_below_the_onednn_rows_take_rotated_rows_from_one_c_call():
    torch.manual_seed(5)
    q = bitladder.quantize(_TwoReaders(), bitladder.Int(8, act=Act(dynamic="token"), rotate=64))
    x = torch.randn(18, 64) * torch.linspace(0.1, 10, 18)[:, None]  # one sentence's tokens
    with torch.no_grad():
        y = q.a(x)
        unfused = q.a.layer(fast.fwht(x, 64))
    few = "fbgemm" if FbgemmW8A8Kernel.available() else "onednn"  # torch has no fbgemm without AVX2
    assert q.a.layer.kernel == f"int8-w8a8-{few}-token" and x._bitladder_prep[0][-1] == 64
    assert not hasattr(x, "_bitladder_rotated")  # no float copy kept on the tensor
    assert torch.equal(y, unfused)  # rotation then division, in C or in tensor operations: the same bits
