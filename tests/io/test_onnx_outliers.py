"""Outlier channels of an activation's output are recomputed from the producer's input in exported graphs:
no Gather where the pattern holds, the same outputs as the gathered form, and other patterns left alone."""

import onnx
import pytest
import torch
from torch import nn

import bitladder
from bitladder import Act, Int
from bitladder.io import onnx_export
from bitladder.io.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")


class Ffn(nn.Module):
    """Linear -> activation -> Linear, the second reading a few channels far wider than the rest."""

    def __init__(self, act: nn.Module, bias: bool = True) -> None:
        super().__init__()
        self.up, self.act, self.down = nn.Linear(16, 64, bias=bias), act, nn.Linear(64, 8)
        with torch.no_grad():
            self.up.weight[[3, 17, 40]] *= 30  # these hidden channels come out wide

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])


def _quantized(model: nn.Module, down) -> nn.Module:
    """A static grid on the first layer, ``down`` (with outlier channels) on the second, as on MiniLM's FFN."""
    calib = [torch.randn(128, 16)]
    q = bitladder.quantize(model.eval(), Int(8, act=Act()), include=["up"], calib=calib)
    return bitladder.quantize(q, down, include=["down"], calib=calib)


def _gathers(path) -> list:
    return [n for n in onnx.load(str(path)).graph.node if n.op_type == "Gather" and n.input[1].endswith("outliers")]


@pytest.mark.parametrize("act, op, bias", [(nn.GELU(), "Gelu", True), (nn.ReLU(), "Relu", True),
                                           (nn.GELU(approximate="tanh"), "Gelu", False)],
                         ids=["gelu", "relu", "gelu-tanh-no-bias"])
@pytest.mark.parametrize("cfg", [Int(8, act=Act(outliers=3)), Int(8, act=Act(smoothquant=0.5, outliers=3))],
                         ids=["outliers", "smoothquant-outliers"])
def test_the_wide_channels_are_recomputed_not_gathered(act, op, bias, cfg, tmp_path, monkeypatch):
    torch.manual_seed(0)
    q = _quantized(Ffn(act, bias), cfg)
    assert q.down.qmeta.get("outliers") == 3
    x = torch.randn(20, 16)
    path = export_onnx(q, x, tmp_path / "re.onnx", static_gemm="qdq")
    assert not _gathers(path)
    nodes = onnx.load(str(path)).graph.node
    assert sum(n.op_type == op for n in nodes) == 2  # the main path's and the recomputed channels'
    monkeypatch.setattr(onnx_export, "recompute_outlier_inputs", lambda proto: 0)
    gathered = export_onnx(q, x, tmp_path / "gather.onnx", static_gemm="qdq")
    assert len(_gathers(gathered)) == 1
    want, got = _run(gathered, x), _run(path, x)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))
    for m in q.modules():
        if hasattr(m, "set_kernel_policy"):
            m.set_kernel_policy("dequant-fp32")  # the layers' own fake quantisation: the reference
    ref = q(x)
    assert torch.allclose(got, ref, atol=1e-3 * float(ref.abs().max()))


def test_other_producers_keep_the_gather(tmp_path):
    """A sum in front of the activation, a producer with outlier channels of its own, or the integer GEMM form
    of the producer: left alone."""

    class TwoUp(Ffn):
        def __init__(self, act: nn.Module) -> None:
            super().__init__(act)
            self.up2 = nn.Linear(16, 64)

        def forward(self, x):
            return self.down(self.act(self.up(x) + self.up2(x)))

    torch.manual_seed(0)
    cfg = Int(8, act=Act(outliers=3))
    for i, (q, gemm, gathers) in enumerate((
            (_quantized(TwoUp(nn.GELU()), cfg), "qdq", 1),
            (bitladder.quantize(Ffn(nn.GELU()).eval(), cfg, calib=[torch.randn(128, 16)]), "qdq", 2),
            (_quantized(Ffn(nn.GELU()), cfg), "integer", 1))):
        x = torch.randn(20, 16)
        path = export_onnx(q, x, tmp_path / f"{i}.onnx", static_gemm=gemm)
        assert len(_gathers(path)) == gathers
        for m in q.modules():
            if hasattr(m, "set_kernel_policy"):
                m.set_kernel_policy("dequant-fp32")
        with torch.no_grad():
            ref = q(x)
        assert torch.allclose(_run(path, x), ref, atol=1e-3 * float(ref.abs().max()))
