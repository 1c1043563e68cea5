"""Activation / BitNet quantisers for QAT: initialisation, gradients, and exact agreement with the packed
modules they convert to."""

import torch
from torch import nn

from bitladder.formats.quant import fake_quant_per_token
from bitladder.methods.train.act_quant import LSQAct, absmean_ternary, grad_scale, ste, token_act
from bitladder.nn.layers import QuantLinear
from bitladder.tensor.quantized import QuantizedTensor


def test_lsq_act_initialises_from_the_first_batch_and_picks_the_sign():
    pos, signed = LSQAct(4), LSQAct(4)
    x = torch.rand(32, 8)
    pos(x), signed(x - 0.5)
    assert (pos.qtype, pos.qrange, signed.qtype, signed.qrange) == ("uint4", (0, 15), "int4", (-8, 7))
    assert torch.isclose(pos.step, 2 * x.abs().mean() / 15**0.5)
    step = pos.step.detach().clone()
    pos(10 * x)  # later batches do not re-initialise
    assert torch.equal(pos.step.detach(), step)


def test_lsq_act_values_lie_on_the_grid_and_the_step_gets_a_gradient():
    torch.manual_seed(0)
    q = LSQAct(3)
    x = torch.randn(16, 8, requires_grad=True)
    y = q(x)
    codes = y.detach() / q.step.detach()
    assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.min() >= -4 and codes.max() <= 3
    y.pow(2).sum().backward()
    assert q.step.grad is not None and q.step.grad != 0
    v = x.detach() / q.step.detach()
    outside = (v < -4) | (v > 3)  # straight-through inside the range, zero gradient where clipped
    assert outside.any() and torch.all(x.grad[outside] == 0)
    assert torch.allclose(x.grad[~outside], 2 * y.detach()[~outside])


def test_ste_and_grad_scale_keep_values_exactly():
    x = torch.randn(5, requires_grad=True)
    q = torch.round(x.detach() * 3) / 3
    y = ste(x, q)
    assert torch.equal(y, q)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))
    s = torch.tensor(0.37, requires_grad=True)
    z = grad_scale(s, 0.01)
    assert torch.equal(z.detach(), s.detach())
    z.backward()
    assert torch.isclose(s.grad, torch.tensor(0.01))


def test_per_token_activations_match_the_packed_layer_exactly():
    x = torch.randn(4, 6, 16) * torch.logspace(-2, 2, 4).reshape(4, 1, 1)
    y = token_act(x, -1)
    assert torch.equal(y, fake_quant_per_token(x, 8, -1))
    rel = ((y - x).abs() / x.abs().amax(-1, keepdim=True)).max()
    assert rel <= 0.5 / 127 + 1e-6  # half a step of each token's own scale
    lin = nn.Linear(16, 3)
    qt = QuantizedTensor.from_float(lin.weight.detach(), "int8")
    packed = QuantLinear.from_float(lin, qt)
    packed.set_token_act(8)
    expect = nn.functional.linear(fake_quant_per_token(x, 8, -1), qt.dequantize(), lin.bias)
    assert torch.equal(packed(x), expect)
    assert packed.kernel.endswith("act-int8-per-token-fakequant")


def test_absmean_ternary_codes_and_scale():
    w = torch.randn(6, 10, requires_grad=True)
    q = absmean_ternary(w)
    s = w.detach().abs().mean(1, keepdim=True).half().float()
    assert torch.equal(q.detach(), torch.clamp(torch.round(w.detach() / s), -1, 1) * s)
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
