"""Per-token integer GEMMs in exported graphs: siblings share one prepared input, every row keeps its
own range, the pre-opset-21 form computes the same, and the file runs in plain onnxruntime."""

import onnx
import pytest
import torch
from torch import nn

import bitladder
from bitladder.io.onnx_export import export_onnx
from bitladder.kernels.fbgemm_w8a8 import act_levels

ort = pytest.importorskip("onnxruntime")


def torch_tol(eight_bit: float) -> float:
    """How close the file (8-bit activations on every CPU) and the torch kernel must be: the kernel rounds
    activations to 7 bits where the CPU (or BITLADDER_CPU) has no VNNI, a step twice as coarse."""
    return eight_bit if act_levels() == 255 else 2.5 * eight_bit


class Siblings(nn.Module):
    """Two layers reading one tensor (like attention's query and key), and one reading another."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(48, 24, bias=False), nn.Linear(48, 24, bias=False),
                                  nn.Linear(24, 8, bias=False))

    def forward(self, x):
        return self.c(torch.relu(self.a(x) * self.b(x)))


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


@pytest.fixture
def quantised():
    torch.manual_seed(0)
    model = Siblings().eval()
    return model, bitladder.quantize(model, bitladder.Int(8, act=bitladder.Act(dynamic="token")))


@pytest.mark.parametrize("opset", [21, 17])
def test_siblings_share_one_quantised_input_and_rows_keep_their_range(quantised, tmp_path, opset):
    model, q = quantised
    x = torch.randn(64, 48) * torch.logspace(-3, 3, 64).unsqueeze(1)  # rows 10^6 apart in magnitude
    path = export_onnx(q, x[:2], tmp_path / "sib.onnx", opset, "dynamic")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("QuantizeLinear") == 2  # a and b share one
    assert "DynamicQuantizeLinear" not in ops
    y = _run(path, x)
    with torch.no_grad():
        ref, fp = q(x), model(x)
    row_err = (y - fp).norm(dim=1) / fp.norm(dim=1)
    assert float(row_err.max()) < 0.05  # per token: the small rows are as accurate as the large ones
    assert float((y - ref).norm() / ref.norm()) < torch_tol(0.01)  # the file computes what the torch kernel does
    assert float(((y - fp).norm(dim=1) / fp.norm(dim=1)).mean()) <= 1.05 * float(
        ((ref - fp).norm(dim=1) / fp.norm(dim=1)).mean())  # and is no less faithful


def test_per_tensor_loses_the_small_rows_that_per_token_keeps(quantised, tmp_path):
    model, q = quantised
    x = torch.randn(64, 48) * torch.logspace(-3, 3, 64).unsqueeze(1)
    y = _run(export_onnx(q, x[:2], tmp_path / "t.onnx", 21, "dynamic-tensor"), x)
    with torch.no_grad():
        fp = model(x)
    assert float(((y[:8] - fp[:8]).norm(dim=1) / fp[:8].norm(dim=1)).min()) > 0.5


def test_zero_rows_stay_zero(quantised, tmp_path):
    model, q = quantised
    x = torch.randn(6, 48)
    x[2] = 0.0
    y = _run(export_onnx(q, x[:2], tmp_path / "z.onnx", 21, "dynamic"), x)
    with torch.no_grad():
        fp = model(x)
    assert torch.isfinite(y).all() and torch.allclose(y[2], fp[2], atol=1e-3)


def test_bias_before_gelu_stays_unfused_per_token(tmp_path):
    """Per token the bias is added after the row scale; a (1, N) bias keeps onnxruntime from fusing Add and
    Gelu into BiasGelu (slower here), with the same result as the 1-D bias."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    q = bitladder.quantize(model, bitladder.Int(8, act=bitladder.Act(dynamic="token")))
    x = torch.randn(20, 48)
    path = export_onnx(q, x[:2], tmp_path / "gelu.onnx", 21, "dynamic")
    graph = onnx.load(str(path)).graph
    inits = {i.name: list(i.dims) for i in graph.initializer}
    add = next(n for n in graph.node if n.op_type == "Add" and any(u.op_type == "Gelu" for u in graph.node
                                                                  if n.output[0] in u.input))
    assert [inits[i] for i in add.input if i in inits] == [[1, 32]]
    used = {i for n in graph.node for i in n.input}
    assert set(inits) <= used  # the 1-D bias it replaced is not left in the file
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "BiasGelu" not in ops and "Gelu" in ops
    with torch.no_grad():
        assert float((_run(path, x) - q(x)).norm() / q(x).norm()) < torch_tol(1e-2)  # two runtimes, one GEMM


class ConvThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Linear(8 * 36, 40), nn.Linear(8 * 36, 40)
        self.c = nn.Linear(40, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.c(torch.relu(self.a(h)) + self.b(h))


@pytest.mark.parametrize("cfg", [
    bitladder.Int(8, act=bitladder.Act()), bitladder.Int(7, act=bitladder.Act(symmetric=True)),
    bitladder.Int(8, act=bitladder.Act(smoothquant=0.5)), bitladder.Int(8, act=bitladder.Act(bits=4)),
    bitladder.Int(4, group=32, act=bitladder.Act(observer="percentile")),
    bitladder.Int(7, act=bitladder.Act(), rotate=32),
    bitladder.Int(4, group=32, act=bitladder.Act(smoothquant=0.5)),
    bitladder.Int(8, act=bitladder.Act(outliers=4)), bitladder.Int(8, act=bitladder.Act(smoothquant=0.5, outliers=3)),
], ids=["w8a8", "w7a8-sym", "w8a8-smoothquant", "w8a4", "w4a8-qdq", "w7a8-hadamard", "w4a8-smoothquant",
        "w8a8-outliers", "w8a8-smoothquant-outliers"])
@pytest.mark.parametrize("gemm", ["integer", "qdq"])
def test_static_activations_export_the_layer_codes_and_run_in_onnxruntime(cfg, gemm, tmp_path):
    torch.manual_seed(0)
    model = ConvThenLinear().eval()
    q = bitladder.quantize(model, cfg, calib=[torch.randn(64, 3, 6, 6)])
    x = torch.randn(20, 3, 6, 6) * 1.5  # some values beyond the calibrated ranges: clamped, like the layer
    for m in q.modules():
        if hasattr(m, "set_kernel_policy"):
            m.set_kernel_policy("dequant-fp32")  # the reference: the layers' own fake quantisation in fp32
    ref = q(x)
    path = export_onnx(q, x, tmp_path / "static.onnx", static_gemm=gemm)
    nodes = onnx.load(str(path)).graph.node
    ops = {n.op_type for n in nodes}
    assert "QuantizeLinear" in ops and "DynamicQuantizeLinear" not in ops
    # int8/int7 weights: the integer GEMM unless Q/DQ around the float op is asked for (always, below 7 bits)
    assert ("MatMulInteger" in ops) == (cfg.bits >= 7 and gemm == "integer")
    side = [n for n in nodes if n.op_type == "Gather" and n.input[1].endswith("outliers")]
    assert len(side) == (3 if cfg.act.outliers else 0)  # the outlier channels' float path: a, b, c (not the conv)
    scaled = [n for n in nodes if n.op_type == "Mul" and n.input[1].endswith("__in")]
    assert bool(scaled) == bool(cfg.act.smoothquant)  # a scale that only zeroes outlier channels is in the weight
    assert torch.allclose(_run(path, x), ref, atol=1e-3 * float(ref.abs().max()))
    for m in q.modules():
        if hasattr(m, "set_kernel_policy"):
            m.set_kernel_policy("auto")
    assert torch.allclose(q(x), ref, atol=torch_tol(1e-3) * float(ref.abs().max()) * (1 if cfg.bits != 8 else 30))


def test_a_trained_binary_layer_is_refused_with_its_name(tmp_path):
    lin = bitladder.quantize(nn.Sequential(nn.Linear(8, 4)), bitladder.Int(8))
    lin[0].set_binary_act(torch.zeros(8))
    with pytest.raises(bitladder.BitladderError, match="layer '0': learned-shift activations"):
        export_onnx(lin, torch.randn(2, 8), tmp_path / "b.onnx")
