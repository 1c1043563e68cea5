"""Blocked low-bit Linear weights written input-major (io/onnx_blocked.py): DequantizeLinear(axis=0) feeds
the MatMul itself, onnxruntime fuses it, and the file keeps the weight-only values."""

import onnx
import pytest
import torch
from torch import nn

import bitladder
from bitladder import AWQ, Int
from bitladder.io.onnx_blocked import blocked_eligible
from bitladder.io.onnx_export import export_onnx
from tests.io.exact import exact, exact_session

ort = pytest.importorskip("onnxruntime")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 96), nn.GELU(), nn.Linear(96, 64)).eval()


def optimised_ops(path, tmp_path) -> list[str]:
    """The node types of the graph onnxruntime runs at its default settings."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-specific layouts
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


CONFIGS = {"int4 g32": Int(4, group=32), "uint4 g32": Int(4, group=32, symmetric=False),
           "int2 g32 asym": Int(2, group=32, symmetric=False), "int3 g16": Int(3, group=16)}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("rank", [2, 3])  # a Gemm (2-D input) and a MatMul behind a Transpose (3-D)
def test_input_major_weights_feed_the_matmul_and_keep_the_values(tmp_path, name, rank):
    q = bitladder.quantize(mlp(), CONFIGS[name])
    x = torch.randn(*([2] * (rank - 2)), 9, 128)
    path = export_onnx(q, x, tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in dq]
    assert len(dq) == 2 and all(a["axis"] == 0 for a in attrs)
    users = [n.op_type for n in graph.node for d in dq if d.output[0] in n.input]
    assert users == ["MatMul", "MatMul"] and "Transpose" not in [n.op_type for n in graph.node]
    packed = {i.name: list(i.dims) for i in graph.initializer if i.name.endswith("__q")}
    assert sorted(packed.values()) == [[96, 64], [128, 96]]  # (in, out)
    with torch.no_grad():
        want = exact(q)(x)
    got = torch.from_numpy(exact_session(path).run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert optimised_ops(path, tmp_path).count("MatMulNBits") == 2  # the runtime's low-bit kernel, fused
    default = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    near = torch.from_numpy(default.run(None, {"input": x.numpy()})[0])  # int8 activations per block
    assert float((near - want).norm() / want.norm()) < 2e-2


def test_input_scale_goes_on_the_input(tmp_path):
    """AWQ's per-input-channel scale multiplies the activations in front of the MatMul, same product."""
    calib = [torch.randn(32, 128) for _ in range(4)]
    q = bitladder.quantize(mlp(), Int(4, group=32, method=AWQ()), calib=calib)
    assert any("in_scale" in m.qmeta for m in q.modules() if hasattr(m, "qmeta"))
    x = torch.randn(5, 128)
    path = export_onnx(q, x, tmp_path / "awq.onnx")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Mul" in ops and "Transpose" not in ops
    with torch.no_grad():
        want = exact(q)(x)
    torch.testing.assert_close(torch.from_numpy(exact_session(path).run(None, {"input": x.numpy()})[0]), want,
                               atol=1e-4, rtol=1e-4)


def test_what_stays_output_major():
    torch.manual_seed(0)
    per_row = bitladder.quantize(nn.Linear(64, 32), Int(4))  # one scale per row: no blocks
    one_block = bitladder.quantize(nn.Linear(32, 16), Int(4, group=32))
    wide = bitladder.quantize(nn.Linear(64, 32), Int(8, group=32))  # 8-bit codes stay as they were
    static = bitladder.quantize(nn.Linear(64, 32), Int(4, group=32, act=bitladder.Act()),
                                calib=[torch.randn(16, 64) for _ in range(8)])
    assert blocked_eligible(bitladder.quantize(nn.Linear(64, 32), Int(4, group=32)))
    assert not any(blocked_eligible(m) for m in (per_row, one_block, wide, static, nn.Linear(4, 4)))
