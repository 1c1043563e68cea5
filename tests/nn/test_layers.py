import pytest
import torch
from torch import nn

import bitladder
from bitladder.nn.base import QuantModule
from bitladder.nn.registry import HANDLERS, HandlerRegistry


def rel_err(a, b):
    return float(((a - b).norm() / b.norm()).detach())


@pytest.mark.parametrize("module,x", [
    (nn.Linear(48, 24), torch.randn(5, 48)),
    (nn.Conv1d(6, 12, 3, stride=2, padding=1), torch.randn(2, 6, 17)),
    (nn.Conv2d(8, 16, 3, padding=1, groups=2), torch.randn(2, 8, 9, 9)),
    (nn.Conv2d(3, 5, (3, 1), stride=(2, 1), dilation=(1, 2), bias=False), torch.randn(1, 3, 11, 7)),
])
def test_int8_layers_track_float(module, x):
    q = bitladder.quantize(module, bitladder.Int(8))
    assert isinstance(q, QuantModule)
    assert rel_err(q(x), module(x)) < 0.01
    assert rel_err(bitladder.quantize(module, bitladder.Int(4, group=8))(x), module(x)) < 0.15


def test_embedding_keeps_padding_idx():
    emb = nn.Embedding(50, 16, padding_idx=0)
    q = bitladder.quantize(emb, bitladder.Int(8))
    idx = torch.tensor([[0, 3, 49]])
    assert rel_err(q(idx), emb(idx)) < 0.01
    assert q.padding_idx == 0


def test_hf_conv1d_uses_output_axis():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(12, 20)  # weight (20, 12): in x out
    q = bitladder.quantize(conv, bitladder.Int(8))
    assert q.qweight.scale.shape == (12, 1)
    x = torch.randn(3, 20)
    assert rel_err(q(x), conv(x)) < 0.01


def test_non_zero_padding_conv_stays_float():
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    q = bitladder.quantize(model, bitladder.Int(8))
    assert isinstance(q[0], nn.Conv2d)


def test_user_layer_registers_like_builtins():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.weight

    registry = HANDLERS.copy()

    @registry.register(Scale)
    class QuantScale(QuantModule):
        @classmethod
        def from_float(cls, module, qweight):
            return cls(qweight)

        def forward(self, x):
            return x @ self.weight()

    model = nn.Sequential(Scale())
    assert bitladder.plan(model).skipped == {"0": "no handler for Scale"}
    q = bitladder.quantize(model, bitladder.Int(8), handlers=registry)
    assert isinstance(q[0], QuantScale)
    x = torch.randn(2, 4)
    # the layer's own forward runs on the dequantised weight, which is within half a step of the float one
    w = q[0].weight()
    torch.testing.assert_close(q(x), x @ w)
    step = q[0].qweight.scale.expand_as(w)
    assert bool(((w - model[0].weight).abs() <= step / 2 + 1e-6).all())
    assert Scale not in HANDLERS  # the default registry was not touched


def test_registry_lookup_by_name_string():
    r = HandlerRegistry()
    r.register("torch.nn.modules.linear.Linear")(int)
    assert r.lookup(nn.Linear(1, 1)) is int


@pytest.mark.parametrize("cfg", [bitladder.Int(4, group=16), bitladder.Int(3, group=8, symmetric=False),
                                 bitladder.Int(2), bitladder.Ternary(), bitladder.Binary(group=8),
                                 bitladder.Float("fp8_e5m2"), bitladder.Float("fp16"), bitladder.Int(3),
                                 bitladder.Ternary(group=3), bitladder.Int(8), bitladder.Int(8, symmetric=False),
                                 bitladder.Int(8, group=8), bitladder.Int(8, group=8, symmetric=False),
                                 bitladder.Int(6, group=8, symmetric=False),
                                 bitladder.Int(2, group=8, symmetric=False)])
def test_embedding_row_gather_equals_full_dequantisation(cfg):
    emb = nn.Embedding(37, 40)
    q = bitladder.quantize(emb, cfg)
    idx = torch.tensor([[5, 0, 5, 36], [1, 2, 3, 4]])
    assert torch.equal(q(idx), nn.functional.embedding(idx, q.weight().float()))


@pytest.mark.parametrize("cfg", [bitladder.Int(2, group=8, symmetric=False), bitladder.Int(3, group=8, symmetric=False),
                                 bitladder.Int(6, group=8, symmetric=False), bitladder.Float("fp16"),
                                 bitladder.Float("bf16")], ids=["int2", "int3", "int6", "fp16", "bf16"])
def test_a_lookup_never_dequantises_the_whole_table(cfg, monkeypatch):
    # 5 groups of zero points end inside a byte at 2, 3 and 6 bits; fp16 and bf16 tables have one (no) scale for
    # the whole table: in each only the rows looked up are dequantised
    from bitladder.tensor.quantized import QuantizedTensor

    q = bitladder.quantize(nn.Embedding(37, 40), cfg)
    assert q.kernel == "gather-dequant-fp32"
    full = nn.functional.embedding(torch.tensor([3, 9]), q.weight().float())
    seen, plain = [], QuantizedTensor.dequantize
    monkeypatch.setattr(QuantizedTensor, "dequantize", lambda self, *a: seen.append(self.shape) or plain(self, *a))
    assert torch.equal(q(torch.tensor([3, 9])), full)
    # the torch path dequantises the two rows alone; the C gather (1-8-bit codes) dequantises nothing in torch
    assert (seen or q._kernels["rows"][1] is not None) and all(shape[0] <= 2 for shape in seen)


@pytest.mark.parametrize("rung", ["fp32", "int8", "int4-g32", "int8-a8d"])
def test_a_channels_last_model_stays_channels_last_once_quantised(rung, tmp_path):
    """``F.conv2d`` gives channels-last outputs where the weight is channels-last; the packed weight has no layout,
    so the layer records the float layer's and follows it, saved and loaded too (a channels-last CNN quantised
    came back NCHW and ran its pooling there, at half its float source's speed on the digits CNN)."""
    import copy

    from bitladder.pipeline.ladder.rungs import parse_rung

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8)
    for float_model in (model, cl):
        q = bitladder.quantize(copy.deepcopy(float_model), parse_rung(rung))
        want = float_model(x)
        got = q(x)
        assert got.stride() == want.stride()
        back = bitladder.load(bitladder.save(q, tmp_path / f"{rung}.safetensors"), model=copy.deepcopy(model))
        assert back(x).stride() == want.stride() and torch.allclose(back(x), got, atol=1e-6)


def test_an_fp32_layer_reads_its_stored_bytes_and_follows_new_ones():
    """The fp32 format's weight is its stored bytes viewed as fp32, kept between calls: loaded weights are what the
    next call uses, and a buffer put in place is what ``weight()`` reads (built kernels, of every format, are
    dropped by ``load_state_dict`` and the layer's own setters, not by a bare assignment)."""
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    qa, qb = bitladder.quantize(a, bitladder.Float("fp32")), bitladder.quantize(b, bitladder.Float("fp32"))
    x = torch.randn(3, 8)
    assert torch.allclose(qa(x), a(x), atol=1e-6) and qa.weight().data_ptr() == qa.weight_packed.data_ptr()
    qa.load_state_dict(qb.state_dict())
    assert torch.allclose(qa(x), b(x), atol=1e-6)
    qa.weight_packed = qb.weight_packed.clone()  # a buffer swapped in, not loaded
    qa.weight_packed.view(torch.float32).mul_(2)
    assert torch.allclose(qa.weight(), 2 * b.weight, atol=1e-6)
