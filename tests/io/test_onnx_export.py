"""ONNX export with standard operators: runs in plain onnxruntime, matches torch, bytes reflect bits."""

import onnx
import pytest
import torch

import bitladder
from bitladder import BitladderError
from bitladder.kernels.fbgemm_w8a8 import act_levels
from bitladder.io.onnx_export import export_onnx
from bitladder.pipeline.ladder.rungs import parse_rung
from tests.io.exact import exact, exact_session

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, x):
    return torch.from_numpy(exact_session(path).run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("rung", ["fp32", "fp16", "fp8_e4m3", "int8", "int8-pt", "int7", "int6-g32-asym", "int5",
                                  "int4-g32", "int4-g32-asym",
                                  "int3-g32-asym", "int2-g32-asym", "ternary", "binary", "int4-g32-awq"])
def test_digits_exports_run_and_match(digits_spec, tmp_path, rung):
    x = digits_spec.eval_batches[0]
    q = bitladder.quantize(digits_spec.model, parse_rung(rung), calib=digits_spec.calib_batches)
    path = export_onnx(q, x[:2], tmp_path / f"{rung}.onnx")
    with torch.no_grad():  # the file holds the dequantised arithmetic: the reference kernel computes exactly that
        got = run_onnx(path, x)
        assert torch.allclose(got, exact(q)(x), atol=1e-4, rtol=1e-4)
        # the kernels torch picks may round activations (bf16 for packed int4): within 1 % of the logits
        assert float((got - q(x)).norm() / got.norm()) < 1e-2
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not any(n.domain for n in onnx.load(str(path)).graph.node)  # standard operators only
    if rung.startswith("int") or rung in ("ternary", "binary"):
        assert "DequantizeLinear" in ops


def test_sizes_reflect_the_bits(digits_spec, tmp_path):
    x = digits_spec.eval_batches[0][:2]
    sizes = {r: export_onnx(bitladder.quantize(digits_spec.model, parse_rung(r)), x, tmp_path / f"{r}.onnx")
             .stat().st_size for r in ("fp32", "int8", "int4-g32")}
    assert sizes["int8"] < 0.3 * sizes["fp32"] and sizes["int4-g32"] < 0.2 * sizes["fp32"]


def test_export_errors_name_the_layer(digits_spec, tmp_path):
    x = digits_spec.eval_batches[0][:2]
    q4 = bitladder.quantize(digits_spec.model, parse_rung("int4-g32"))
    with pytest.raises(BitladderError, match=r"layer 'features.0'.*opset >= 21"):
        export_onnx(q4, x, tmp_path / "old.onnx", opset=17)
    hqq = bitladder.quantize(digits_spec.model, parse_rung("int4-g32-asym-hqq"))
    with pytest.raises(BitladderError, match="fractional zero points"):
        export_onnx(hqq, x, tmp_path / "hqq.onnx")
    cb = bitladder.quantize(digits_spec.model, bitladder.Codebook(bits=3))
    with pytest.raises(BitladderError, match="codebook"):
        export_onnx(cb, x, tmp_path / "cb.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


def test_dynamic_int8_uses_integer_matmul_and_stays_close(digits_spec, tmp_path):
    x = digits_spec.eval_batches[0]
    q = bitladder.quantize(digits_spec.model, parse_rung("int8"))
    path = export_onnx(q, x[:2], tmp_path / "dyn.onnx", activations="dynamic")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") == 2  # the two Linear layers; convolutions stay weight-only
    y = run_onnx(path, x)
    with torch.no_grad():
        ref = q(x)
    assert float((y - ref).norm() / ref.norm()) < 0.02
    assert float((y.argmax(1) == digits_spec.targets).float().mean()) >= 0.97
    with pytest.raises(BitladderError, match="activations must be"):
        export_onnx(q, x[:2], tmp_path / "bad.onnx", activations="int4")


@pytest.mark.parametrize("acts", ["dynamic", "dynamic-tensor"])
def test_dynamic_export_matches_the_torch_kernel_with_smoothquant(digits_spec, tmp_path, acts):
    """Per-token (row range -> blocked QuantizeLinear) or per-call (DynamicQuantizeLinear) activation scales, a
    SmoothQuant input scale in front: the file computes what the torch fbgemm kernel computes."""
    x = digits_spec.eval_batches[0]
    act = bitladder.Act(dynamic="token" if acts == "dynamic" else "tensor", smoothquant=0.5)
    q = bitladder.quantize(digits_spec.model, bitladder.Int(8, act=act), include=["classifier.*"],
                           calib=digits_spec.calib_batches)
    assert all("in_scale" in m.qmeta for n, m in q.named_modules() if n.startswith("classifier.") and
               hasattr(m, "qmeta"))
    path = export_onnx(q, x[:2], tmp_path / "dyn.onnx", activations=acts)
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == (0 if acts == "dynamic" else 2)
    blocked = [n for n in graph.node if n.op_type == "QuantizeLinear" and
               any(a.name == "block_size" for a in n.attribute)]
    assert len(blocked) == (2 if acts == "dynamic" else 0)  # per token: one block per row
    assert not any(n.domain for n in graph.node)
    y = run_onnx(path, x)
    with torch.no_grad():
        ref, fp = q(x), digits_spec.model(x)
    # same integer GEMM semantics in both runtimes: far closer to each other than either to fp32 (the torch
    # kernel rounds activations to 7 bits without VNNI, the file keeps 8 on every CPU)
    assert float((y - ref).norm() / ref.norm()) < (0.01 if act_levels() == 255 else 0.025)
    assert float((y.argmax(1) == fp.argmax(1)).float().mean()) >= 0.98


@pytest.mark.parametrize("rung", ["int4-g32", "int2-g32-asym", "ternary", "binary", "int4-g32-awq", "int8"])
def test_matmulnbits_export_keeps_weight_only_numerics(digits_spec, tmp_path, rung):
    x = digits_spec.eval_batches[0]
    q = bitladder.quantize(digits_spec.model, parse_rung(rung), calib=digits_spec.calib_batches)
    path = export_onnx(q, x[:2], tmp_path / f"{rung}.onnx", weights="matmulnbits")
    with torch.no_grad():
        assert torch.allclose(run_onnx(path, x), exact(q)(x), atol=1e-4, rtol=1e-4)  # fp32 activations: exact
    nodes = onnx.load(str(path)).graph.node
    linears = sum(isinstance(m, torch.nn.Linear) or type(m).__name__ == "QuantLinear" for m in q.modules())
    nbits = [n for n in nodes if n.op_type == "MatMulNBits"]
    # every Linear of 4 bits or fewer becomes MatMulNBits; 8-bit ones keep the standard rule
    assert len(nbits) == (0 if rung == "int8" else linears) and all(n.domain == "com.microsoft" for n in nbits)


def test_unknown_weights_mode_is_refused(digits_spec, tmp_path):
    with pytest.raises(BitladderError, match="weights must be one of standard, matmulnbits"):
        export_onnx(digits_spec.model, digits_spec.eval_batches[0][:2], tmp_path / "x.onnx", weights="nbits")
    with pytest.raises(BitladderError, match="static_gemm must be one of integer, qdq; got 'int8'"):
        export_onnx(digits_spec.model, digits_spec.eval_batches[0][:2], tmp_path / "x.onnx", static_gemm="int8")
    assert not (tmp_path / "x.onnx").exists()


def test_tied_embeddings_are_exported_once_and_shared(tmp_path):
    """A language model whose output layer shares the embedding's weight (both int4): one packed tensor in
    the file, read by the lookup and the output projection, logits as bitladder's."""
    import numpy as np

    from tests.io.tiny_lm import tiny_llama as _tiny

    q = bitladder.quantize(_tiny(tied=True), bitladder.Int(bits=4, group=32))
    x = torch.randint(0, 256, (2, 16))
    path = export_onnx(q, x, tmp_path / "tied.onnx")
    proto = onnx.load(str(path))
    packed = [i for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT4]
    vocab = [i for i in packed if list(i.dims)[0] == 256]
    assert len(vocab) == 1  # one copy of the 256 x 64 table
    got = exact_session(path).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - exact(q)(x).numpy()).max() < 1e-4
