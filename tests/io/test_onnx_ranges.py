"""The static saturation proof: it flags u8 x s8 GEMMs whose 16-bit pair sums can overflow, passes the
exporter's graphs, and the exporter's u8 x u8 form is exact on this host whatever its ISA."""

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import bitladder
from bitladder.io.onnx_export import export_onnx
from bitladder.io.onnx_ranges import as_uint8_weights, gemm_problems, integer_gemms

ort = pytest.importorskip("onnxruntime")
K, N = 64, 16


def _graph(w: np.ndarray, w_zp, clip_hi: int | None = None):
    """x (uint8, optionally through Clip(0, clip_hi)) times the initializer w."""
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(w_zp, w.dtype), "wz"),
             numpy_helper.from_array(np.array(0, np.uint8), "xz")]
    nodes, a = [], "x"
    if clip_hi is not None:
        inits += [numpy_helper.from_array(np.array(0, np.uint8), "lo"),
                  numpy_helper.from_array(np.array(clip_hi, np.uint8), "hi")]
        nodes.append(helper.make_node("Clip", ["x", "lo", "hi"], ["xc"]))
        a = "xc"
    nodes.append(helper.make_node("MatMulInteger", [a, "W", "xz", "wz"], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, ["M", K])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", N])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_full_range_u8_times_s8_is_flagged():
    w = np.full((K, N), 127, np.int8)
    [problem] = gemm_problems(_graph(w, 0))
    assert "64770 > 32767" in problem and "VNNI" in problem


@given(bmax=st.integers(1, 127), hi=st.integers(1, 255))
@settings(max_examples=40, deadline=None)
def test_flagged_exactly_when_a_pair_sum_can_exceed_16_bits(bmax, hi):
    w = np.zeros((K, N), np.int8)
    w[0, 0], w[1, 1] = bmax, -bmax
    assert bool(gemm_problems(_graph(w, 0, hi))) == (2 * hi * bmax > 32767)


def test_u8_times_u8_is_never_flagged():
    w, zp = as_uint8_weights(np.full((K, N), -127, np.int8))
    assert gemm_problems(_graph(w, zp)) == []


def test_the_u8_u8_form_is_exact_here_for_full_range_operands():
    """The worst case for vpmaddubsw (every pair 255 x +-127) computes exactly on this host, VNNI or not."""
    rng = np.random.default_rng(0)
    codes = rng.choice(np.array([-127, 127], np.int8), size=(K, N))
    x = rng.choice(np.array([0, 255], np.uint8), size=(8, K))
    w, zp = as_uint8_weights(codes)
    sess = ort.InferenceSession(_graph(w, zp).SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    assert np.array_equal(y, x.astype(np.int64) @ codes.astype(np.int64))


@pytest.mark.parametrize("activations", ["dynamic", "dynamic-tensor"])
def test_exported_integer_graphs_are_proven_safe(tmp_path, activations):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    q = bitladder.quantize(model, bitladder.Int(8, act=bitladder.Act(dynamic="token")))
    path = export_onnx(q, torch.randn(2, 48), tmp_path / "m.onnx", 21, activations)
    proto = onnx.load(str(path))
    assert integer_gemms(proto) == 2 and gemm_problems(proto) == []


def test_seven_bit_weights_keep_the_fast_signed_gemm_and_stay_safe(tmp_path):
    """int7 codes (within +-64) against full-range uint8 activations: 2 * 255 * 64 = 32640 fits 16 bits, so
    the weights stay int8 (u8 x s8, the faster GEMM) and the proof still passes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    q = bitladder.quantize(model, bitladder.Int(7, act=bitladder.Act(dynamic="token")))
    x = torch.randn(16, 48)
    path = export_onnx(q, x[:2], tmp_path / "w7.onnx", 21, "dynamic")
    proto = onnx.load(str(path))
    weights = [i for i in proto.graph.initializer if i.name.endswith("__qT")]
    assert weights and all(w.data_type == TensorProto.INT8 for w in weights) and gemm_problems(proto) == []
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():  # int7 weights give the torch kernel all 8 activation bits on every CPU: same grid
        ref = q(x)
    assert float((torch.from_numpy(y) - ref).norm() / ref.norm()) < 0.01


def _qdq_graph(w: np.ndarray, w_zp) -> onnx.ModelProto:
    """float x -> QuantizeLinear (uint8) -> DequantizeLinear -> MatMul <- Transpose <- DequantizeLinear(w): the
    Q/DQ form that OpenVINO and onnxruntime run as an integer GEMM on the codes."""
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(w_zp, w.dtype), "wz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "ws"),
             numpy_helper.from_array(np.array(0.1, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["W", "ws", "wz"], ["wd"]),
             helper.make_node("Transpose", ["wd"], ["wt"]),
             helper.make_node("MatMul", ["xd", "wt"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_gemms_are_checked_like_integer_ones():
    w = np.full((N, K), 127, np.int8)
    proto = _qdq_graph(w, 0)
    [problem] = gemm_problems(proto)
    assert problem.startswith("Q/DQ MatMul") and "64770 > 32767" in problem and integer_gemms(proto) == 1
    assert gemm_problems(_qdq_graph(np.full((N, K), 64, np.int8), 0)) == []  # 7-bit codes: 32640 fits
    assert gemm_problems(_qdq_graph(*as_uint8_weights(w))) == []  # u8 x u8


def test_static_qdq_export_writes_8_bit_weights_as_uint8_and_7_bit_as_int8(tmp_path):
    """A runtime fuses a static layer's Q/DQ pair into a u8 x s8 GEMM, which saturates without VNNI; 8-bit codes
    go out as uint8 around 128 (the same values, a u8 x u8 GEMM), 7-bit codes stay int8 (safe and faster)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(64, 48)
    for bits, dtype in ((8, TensorProto.UINT8), (7, TensorProto.INT8)):
        q = bitladder.quantize(model, bitladder.Int(bits, act=bitladder.Act()), calib=[x])
        files = [export_onnx(q, x[:2], tmp_path / f"w{bits}-{g}.onnx", 21, static_gemm=g) for g in ("integer", "qdq")]
        proto = onnx.load(str(files[1]))
        weights = [i for i in proto.graph.initializer if i.name.endswith(".weight__q")]
        assert len(weights) == 2 and all(w.data_type == dtype for w in weights), bits
        assert integer_gemms(proto) == 2 and gemm_problems(proto) == []
        ys = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
              for f in files]
        # the same model as the integer form: float rounding before the second layer's grid moves a code at a tie
        assert float(np.linalg.norm(ys[1] - ys[0]) / np.linalg.norm(ys[0])) < 2e-3  # measured 3.4e-4


def test_openvino_runs_a_7_bit_static_qdq_file_as_integer_gemms_with_its_numbers(tmp_path):
    """The int8 weights a 7-bit static file keeps are what OpenVINO turns into its own u8 x s8 GEMMs (the bench's
    W7A8 Q/DQ row); they cannot saturate, so OpenVINO gives onnxruntime's numbers for the file."""
    ov = pytest.importorskip("openvino")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    x = torch.randn(64, 48)
    q = bitladder.quantize(model, bitladder.Int(7, act=bitladder.Act()), calib=[x])
    path = export_onnx(q, x[:2], tmp_path / "w7.onnx", 21, static_gemm="qdq")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    gemms = []
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str).startswith("FullyConnected"):
            gemms.append(info["runtimePrecision"].astype(str))
    assert gemms == ["u8", "u8"]  # both layers on OpenVINO's integer GEMM, not a float one
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    got = compiled({"input": x.numpy()})[0]
    assert float(np.linalg.norm(got - want) / np.linalg.norm(want)) < 1e-5  # measured 8.5e-8
