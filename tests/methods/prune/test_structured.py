import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import bitladder
from bitladder import BitladderError
from bitladder.io.artifact import load
from bitladder.io.onnx_export import export_onnx
from bitladder.io.structure import describe
from bitladder.methods.prune.budget import flops, params
from bitladder.methods.prune.structured import ChannelPrune, prune_channels

from tests.methods.prune.nets import Random, resnetish


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.fc = nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16 * 4 * 4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.c1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) + h


def test_physical_removal_keeps_kept_channels_exact():
    torch.manual_seed(0)
    m = CNN().eval()
    with torch.no_grad():  # channels 0..3 of c2 carry no signal: pruning them must not change the output
        m.c2.weight[:8] = 0
        m.c2.bias[:8] = -1.0  # ReLU kills them
    x = torch.randn(4, 1, 8, 8)
    p, rep = prune_channels(m, ChannelPrune(ratio=0.5), x[:1])
    assert rep["pruned"]["c2"] == (16, 8) and rep["pruned"]["c1"] == (8, 4)
    assert p.c2.weight.shape == (8, 4, 3, 3) and p.bn.num_features == 4 and p.fc.weight.shape == (5, 8 * 16)
    assert "c1" in rep["pruned"] and rep["skipped"] == {"fc": "its output is the model's output"}
    ref = m(x)
    q, _ = prune_channels(m, ChannelPrune(ratio=0.0), x[:1])
    assert torch.allclose(q(x), ref, atol=1e-6)
    # only c1's pruning changes the function; c2's dead channels went without a trace
    m2, _ = prune_channels(m, ChannelPrune(ratio=0.5), x[:1])
    assert sum(t.numel() for t in m2.parameters()) < 0.4 * sum(t.numel() for t in m.parameters())


def test_residual_reaching_the_output_is_named_and_left_whole():
    p, rep = prune_channels(Residual(), ChannelPrune(0.5), torch.randn(2, 8))
    assert rep["skipped"] == {"a": "its output is the model's output", "b": "its output is the model's output"}
    assert p.a.out_features == 8


def test_untraceable_model_is_one_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            return self.l(x) if x.sum() > 0 else x

    with pytest.raises(BitladderError, match="cannot trace the model with torch.fx") as e:
        prune_channels(Branchy(), ChannelPrune(0.5), torch.randn(2, 4))
    assert "\n" not in str(e.value)


def test_keyword_inputs_outside_an_encoder_and_bad_options_are_one_line_errors():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, a, b):
            return self.l(a + b)

    with pytest.raises(BitladderError, match="keyword inputs and is not a BERT-style encoder"):
        prune_channels(KW(), ChannelPrune(0.5), {"a": torch.randn(1, 4), "b": torch.randn(1, 4)})
    with pytest.raises(BitladderError, match="target must be one of channels, flops, params"):
        ChannelPrune(0.5, target="macs")
    with pytest.raises(BitladderError, match="max_group"):
        ChannelPrune(0.5, max_group=1.0)
    with pytest.raises(BitladderError, match="latency weighs units against each other under a global budget"):
        ChannelPrune(0.5, latency=True)
    with pytest.raises(BitladderError, match="latency must be true or false"):
        ChannelPrune(0.5, target="flops", latency="yes")


def sizes(model):
    return sum(t.numel() for t in model.state_dict().values())


def ort_run(path, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def test_resnetish_to_half_the_flops_runs_exports_and_reloads(tmp_path):
    m = resnetish()
    x = torch.randn(4, 3, 16, 16)
    p, rep = prune_channels(m, ChannelPrune(0.5, target="flops"), x)
    ratio = flops(p, x) / flops(m, x)  # measured again here, on the whole batch
    assert 0.45 <= ratio <= 0.5 and rep["flops"][1] / rep["flops"][0] == pytest.approx(ratio, abs=1e-9)
    assert sizes(p) < 0.6 * sizes(m) and params(p) == rep["params"][1]
    assert p(x).shape == m(x).shape == (4, 10)
    for layer in ("stem", "block.expand", "branch_a", "branch_b", "fuse", "attn", "attn:heads"):
        assert rep["pruned"][layer][1] < rep["pruned"][layer][0], layer
    assert p.block.project.out_channels == p.stem.out_channels == p.block.bn4.num_features  # residual
    assert p.block.dw.groups == p.block.dw.in_channels == p.block.dw.out_channels  # depthwise in = out
    assert p.block.gc.groups < 4 and p.block.gc.in_channels % 12 == 0  # whole groups of 12 went
    assert p.fuse.in_channels == p.branch_a.out_channels + p.branch_b.out_channels == p.bn_cat.num_features
    assert p.attn.q.out_features == 8 * p.attn.heads and p.attn.o.in_features == 8 * p.attn.heads
    assert rep["skipped"] == {"head": "its output is the model's output"}
    path = bitladder.save(p, tmp_path / "p.safetensors", structure=describe(p, resnetish()))
    back = load(path, model=resnetish())
    assert torch.equal(back(x), p(x))
    onnx = export_onnx(back, x[:1], tmp_path / "p.onnx")
    np.testing.assert_allclose(ort_run(onnx, x), p(x).detach().numpy(), atol=1e-4)


def test_latency_aware_pruning_meets_the_same_flops_budget_and_runs():
    m, x = resnetish(), torch.randn(8, 3, 16, 16)
    p, rep = prune_channels(m, ChannelPrune(0.5, target="flops", latency=True), x)
    # within the budget, and at most 5 % more importance removed than the least of the search's candidates
    assert flops(p, x) / flops(m, x) <= 0.5 and p(x).shape == (8, 10)
    goal = 0.5 * rep["flops"][0]
    least = min(c["importance_lost"] for c in rep["candidates"] if c["flops"] <= goal)
    assert least <= rep["importance_lost"] <= 1.05 * least + 1e-6
    assert ChannelPrune(0.5, target="flops", latency=True).to_dict()["latency"] is True


def test_resnetish_by_parameters_and_channels():
    m, x = resnetish(), torch.randn(2, 3, 16, 16)
    p, rep = prune_channels(m, ChannelPrune(0.5, target="params", importance="l2"), x)
    assert 0.45 <= params(p) / params(m) <= 0.5 and p(x).shape == (2, 10)
    p, rep = prune_channels(m, ChannelPrune(0.5), x)  # half of every group's units
    assert rep["pruned"]["fuse"] == (32, 16) and rep["pruned"]["branch_a"] == (13, 7)
    assert rep["pruned"]["block.gc"] == (48, 24) and rep["pruned"]["attn:heads"] == (4, 2)


@st.composite
def nets(draw):
    kinds = draw(st.lists(st.tuples(st.sampled_from(["res", "cat", "dw"]), st.integers(1, 7), st.integers(1, 7)),
                          min_size=1, max_size=4))
    return draw(st.integers(2, 9)), kinds, draw(st.floats(0.0, 0.9)), draw(st.sampled_from(["channels", "flops", "params"]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nets())
def test_pruning_never_breaks_the_forward(case):
    c, kinds, ratio, target = case
    torch.manual_seed(0)
    m = Random(c, kinds).eval()
    x = torch.randn(3, 2, 6, 6)
    p, rep = prune_channels(m, ChannelPrune(ratio, target=target), x)
    assert p(x).shape == (3, 3) and torch.isfinite(p(x)).all()
    assert params(p) <= params(m) and all(after >= 1 for _, after in rep["pruned"].values())


def test_digits_at_half_the_flops_recovers_exports_and_reloads(digits_spec, tmp_path):
    from bitladder.methods.prune.finetune import finetune_classifier
    from bitladder.zoo import digits

    d = digits.load_data()
    x, y = d["x_test"], d["y_test"]
    m = digits_spec.model
    acc = lambda model: float((model(x).argmax(1) == y).float().mean())
    p, rep = prune_channels(m, ChannelPrune(0.5, target="flops"), d["x_train"][:64])
    assert 0.45 <= flops(p, x) / flops(m, x) <= 0.5 and sizes(p) < 0.6 * sizes(m)
    assert len(rep["pruned"]) == 4 and rep["skipped"] == {"classifier.3": "its output is the model's output"}
    finetune_classifier(p, d["x_train"], d["y_train"], epochs=5)
    assert 100 * (acc(m) - acc(p)) <= 1.0
    path = bitladder.save(p, tmp_path / "d.safetensors", source="digits", structure=describe(p, digits_spec.fresh_model()))
    back = bitladder.load(path)  # the built-in factory + the recorded structure
    assert torch.equal(back(x), p(x))
    onnx = export_onnx(back, x[:1], tmp_path / "d.onnx")
    assert (ort_run(onnx, x).argmax(1) == p(x).argmax(1).numpy()).all()


def test_simd_widths_on_digits_keep_accuracy_export_and_reload(digits_spec, tmp_path):
    from bitladder.methods.prune.finetune import finetune_classifier
    from bitladder.zoo import digits

    d = digits.load_data()
    x, y = d["x_test"], d["y_test"]
    m = digits_spec.model
    acc = lambda model: float((model(x).argmax(1) == y).float().mean())
    p, rep = prune_channels(m, ChannelPrune(0.5, target="flops", latency=True, round_to=8), x)
    assert flops(p, x) / flops(m, x) <= 0.5
    assert all(after % 8 == 0 for _, after in rep["pruned"].values()), rep["pruned"]
    finetune_classifier(p, d["x_train"], d["y_train"], epochs=5)
    assert 100 * (acc(m) - acc(p)) <= 1.0
    path = bitladder.save(p, tmp_path / "d.safetensors", source="digits", structure=describe(p, digits_spec.fresh_model()))
    back = bitladder.load(path)
    assert torch.equal(back(x), p(x))
    onnx = export_onnx(back, x[:1], tmp_path / "d.onnx")
    assert (ort_run(onnx, x).argmax(1) == p(x).argmax(1).numpy()).all()


def test_round_to_simd_reads_the_cpu_as_kernels_see_it(monkeypatch):
    from bitladder.kernels.cpu import current

    monkeypatch.setenv("BITLADDER_CPU", "default")  # no vector extension in force: SSE's 4 floats
    assert ChannelPrune(round_to="simd").lanes() == 4
    monkeypatch.setenv("BITLADDER_CPU", "avx2")
    assert ChannelPrune(round_to="simd").lanes() == (8 if current().has("avx2") else 4)
    assert ChannelPrune(round_to=16).lanes() == 16
    for bad in (0, -8, 2.5, True, "avx"):
        with pytest.raises(BitladderError, match="round_to must be an integer >= 1 or 'simd'"):
            ChannelPrune(round_to=bad)
