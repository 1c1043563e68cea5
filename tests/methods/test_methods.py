"""AWQ, HQQ, AdaRound, bias correction and cross-layer equalisation against round-to-nearest."""

import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError, Int
from bitladder.formats.quant import sqnr_db
from bitladder.methods.quantize.cle import equalize
from bitladder.methods.quantize.methods import AWQ, HQQ, RTN, AdaRound


def mse(model, ref, x):
    with torch.no_grad():
        return float((model(x) - ref(x)).pow(2).mean())


def salient_data(n=1024, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    x[:, :4] *= 20  # a few salient channels, as AWQ assumes
    return x


def test_awq_protects_salient_channels():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    x = salient_data()
    rtn = bitladder.quantize(lin, Int(3, group=32))
    awq = bitladder.quantize(lin, Int(3, group=32, method=AWQ()), calib=[x[:512]])
    assert mse(awq, lin, x[512:]) < 0.7 * mse(rtn, lin, x[512:])
    assert awq.in_scale.shape == (64,)


def test_awq_leaves_convolutions_to_rtn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 5))
    q = bitladder.quantize(model, Int(4, group=8, method=AWQ()), calib=[torch.randn(32, 3, 8, 8)])
    assert q[0].qmeta["method"] == "rtn" and q[2].qmeta["method"] == "awq"


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_hqq_weight_error_no_worse_than_min_max(bits):
    torch.manual_seed(bits)
    w = torch.randn(64, 256)
    w[:, ::17] *= 6  # heavy tails
    lin = nn.Linear(256, 64)
    lin.weight.data = w
    rtn = bitladder.quantize(lin, Int(bits, group=64, symmetric=False))
    hqq = bitladder.quantize(lin, Int(bits, group=64, symmetric=False, method=HQQ()))
    assert sqnr_db(w, hqq.weight()) >= sqnr_db(w, rtn.weight()) - 1e-6
    assert hqq.qweight.zero_point.dtype == torch.float16


def test_hqq_needs_asymmetric():
    with pytest.raises(BitladderError, match="asymmetric"):
        Int(4, method=HQQ())


def test_adaround_beats_nearest_rounding():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    g = torch.Generator().manual_seed(0)  # correlated inputs: rounding errors can cancel
    x = torch.randn(1024, 4, generator=g) @ torch.randn(4, 64, generator=g) + 0.1 * torch.randn(1024, 64, generator=g)
    rtn = bitladder.quantize(lin, Int(3, method=RTN(clip_search=True)))
    ada = bitladder.quantize(lin, Int(3, method=AdaRound(iters=300)), calib=[x[:512]])
    codes = ada.qweight.codes()
    assert int(codes.min()) >= -4 and int(codes.max()) <= 3
    assert mse(ada, lin, x[512:]) < 0.5 * mse(rtn, lin, x[512:])


def test_bias_correction_removes_the_mean_shift():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16)
    x = torch.rand(1024, 64) + 1.0  # inputs with a large mean: rounding error becomes a bias
    plain = bitladder.quantize(lin, Int(2, group=32, symmetric=False))
    fixed = bitladder.quantize(lin, Int(2, group=32, symmetric=False, bias_correction=True), calib=[x[:512]])
    with torch.no_grad():
        shift_plain = (plain(x[512:]) - lin(x[512:])).mean(0).abs().mean()
        shift_fixed = (fixed(x[512:]) - lin(x[512:])).mean(0).abs().mean()
    assert float(shift_fixed) < 0.2 * float(shift_plain)
    assert fixed.qmeta["bias_corrected"]


def test_bias_correction_needs_data():
    with pytest.raises(BitladderError, match="bias_correction needs calibration"):
        bitladder.quantize(nn.Linear(4, 4), Int(4, bias_correction=True))


def test_cle_keeps_the_function_and_balances_ranges():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        model[0].weight[:4] *= 50  # badly balanced channels
    x = torch.randn(16, 1, 8, 8)
    before = model(x)
    r_before = model[0].weight.abs().amax(dim=(1, 2, 3))
    assert equalize(model) == 1
    assert torch.allclose(model(x), before, atol=1e-4, rtol=1e-4)
    r_after = model[0].weight.abs().amax(dim=(1, 2, 3))
    assert float(r_after.max() / r_after.min()) < float(r_before.max() / r_before.min())


def test_cle_helps_per_tensor_quantisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    with torch.no_grad():
        model[0].weight[:8] *= 30
        model[0].bias[:8] *= 30
    x = torch.randn(256, 16)
    plain = bitladder.quantize(model, Int(4, granularity="tensor"))
    eq = bitladder.quantize(model, Int(4, granularity="tensor", equalize=True))
    assert mse(eq, model, x) < 0.8 * mse(plain, model, x)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_codebook_beats_uniform_grid_on_weights_and_round_trips(bits, tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(128, 32)
    lin.weight.data = torch.randn(32, 128) ** 3  # far from uniform
    cb = bitladder.quantize(lin, bitladder.Codebook(bits=bits))
    uni = bitladder.quantize(lin, Int(bits, symmetric=False))
    assert sqnr_db(lin.weight, cb.weight()) > sqnr_db(lin.weight, uni.weight())
    assert cb.qweight.nbytes == 32 * 128 * bits // 8 + 32 * 2**bits * 2
    back = bitladder.load(bitladder.save(cb, tmp_path / "c.safetensors"), model=nn.Sequential(lin)[0])
    x = torch.randn(4, 128)
    assert torch.equal(back(x), cb(x))


def test_codebook_embedding_rows():
    emb = nn.Embedding(40, 16)
    q = bitladder.quantize(emb, bitladder.Codebook(bits=4))
    idx = torch.tensor([3, 3, 39])
    assert torch.equal(q(idx), q.weight()[idx])
