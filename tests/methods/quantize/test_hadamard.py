"""The Hadamard transform in quantize(): exact in float, composes with GPTQ and per-token W8A8, saves and
loads, and lowers the error of low-bit weights with outlier channels."""

import pytest
import torch
from torch import nn

import bitladder
from bitladder.errors import BitladderError
from bitladder.io.artifact import load, save
from bitladder.io.structure import describe
from bitladder.methods.quantize.configs import Int
from bitladder.methods.quantize.methods import GPTQ, Act
from bitladder.methods.quantize.transforms import active, registered
from bitladder.nn.base import QuantModule
from bitladder.nn.rotated import Rotated


def _model(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64))
    with torch.no_grad():  # a few outlier input channels, as transformers' activations have
        m[0].weight[:, :4] *= 12
    return m


def _x(seed=1):
    torch.manual_seed(seed)
    x = torch.randn(256, 128)
    x[:, 7] *= 20
    return x


def _err(q, m, x):
    return float((q(x) - m(x)).pow(2).mean() / m(x).pow(2).mean())


def test_rotation_is_registered_and_only_runs_when_asked():
    assert {"equalize", "hadamard", "smoothquant", "bias_correction", "activations"} <= set(registered())
    assert [t.name for t in active(Int(4, group=32, rotate=64))] == ["hadamard"]
    assert active(Int(4, group=32)) == []
    with pytest.raises(BitladderError, match="power of two"):
        Int(4, rotate=48)


def test_rotated_layers_wrap_quantised_inner_layers_and_lower_the_error():
    m, x = _model(), _x()
    plain = bitladder.quantize(m, Int(3, group=32))
    rot = bitladder.quantize(m, Int(3, group=32, rotate=128))
    assert isinstance(rot[0], Rotated) and isinstance(rot[0].layer, QuantModule) and rot[0].block == 128
    assert isinstance(rot[2], Rotated) and rot[2].block == 128  # 256 inputs: the block is capped at 128
    assert _err(rot, m, x) < 0.7 * _err(plain, m, x)


def test_rotation_composes_with_gptq_and_per_token_w8a8():
    m, x = _model(), _x()
    calib = [x[:128]]
    gptq = bitladder.quantize(m, Int(4, group=32, method=GPTQ()), calib=calib)
    both = bitladder.quantize(m, Int(4, group=32, method=GPTQ(), rotate=64), calib=calib)
    assert both[0].layer.qmeta["method"] == "gptq"
    assert _err(both, m, x[128:]) < _err(gptq, m, x[128:])
    w8a8 = bitladder.quantize(m, Int(8, act=Act(dynamic="token")))
    w8a8r = bitladder.quantize(m, Int(8, act=Act(dynamic="token"), rotate=128))
    assert w8a8r[0].layer.kernel_policy == "int8-w8a8-token"
    assert _err(w8a8r, m, x) < _err(w8a8, m, x)


def test_a_rotated_artifact_loads_into_the_float_architecture(tmp_path):
    m, x = _model(), _x()
    q = bitladder.quantize(m, Int(4, group=32, rotate=64))
    for structure in (describe(q, _model()), None):  # a rotation records itself when no structure is given
        path = save(q, tmp_path / "r.safetensors", structure=structure)
        back = load(path, _model(5))
        assert isinstance(back[0], Rotated)
        assert torch.equal(back(x), q(x))


@pytest.mark.parametrize("acts", ["float", "dynamic"])
def test_a_rotated_model_exports_to_onnx_and_runs_the_same(tmp_path, acts):
    ort = pytest.importorskip("onnxruntime")
    from bitladder.io.onnx_export import export_onnx
    from tests.io.exact import exact, exact_session

    m, x = _model(), _x()
    cfg = Int(4, group=32, rotate=64) if acts == "float" else Int(8, act=Act(dynamic="token"), rotate=64)
    q = bitladder.quantize(m, cfg)
    path = export_onnx(q, x[:2], tmp_path / "r.onnx", activations=acts)
    got = exact_session(path).run(None, {"input": x.numpy()})[0]  # fp32 activations in fused 4-bit MatMuls
    want = (exact(q) if acts == "float" else q)(x).detach()  # the float file holds the dequantised weights
    tol = 1e-4 if acts == "float" else 0.05  # dynamic: the file quantises activations to 8 bits, torch maybe to 7
    assert float((torch.from_numpy(got) - want).norm() / want.norm()) < tol
