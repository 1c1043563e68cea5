"""Calibrated methods as the engine runs them: new layers compute on the reference path until the model is done."""

import pytest
import torch

import bitladder
from bitladder import AWQ, GPTQ, Int
from bitladder.nn.base import QuantModule
from tests.io.tiny_lm import tiny_llama


def _few_rows() -> list[torch.Tensor]:
    # 16 rows a call: auto would run 4-bit layers with int8 activations (MatMulNBits) at this size
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 256, (2, 8), generator=g) for _ in range(8)]


@pytest.mark.parametrize("method", [GPTQ(), AWQ(grid=5)])
def test_calibration_does_not_depend_on_the_kernels_the_model_will_run(method):
    calib = _few_rows()
    auto = bitladder.quantize(tiny_llama(), Int(4, group=32, method=method), calib=calib)
    reference = bitladder.quantize(tiny_llama(), Int(4, group=32, method=method, kernel="dequant-fp32"), calib=calib)
    layers = {n: m for n, m in auto.named_modules() if isinstance(m, QuantModule) and m.qmeta["method"] != "rtn"}
    assert len(layers) == 15
    for name, m in layers.items():
        other = reference.get_submodule(name)
        assert torch.equal(m.qweight.codes(), other.qweight.codes()), name
        assert torch.equal(m.qweight.scale, other.qweight.scale), name
        # the policy asked for, recorded, and no kernel built by the calibration passes (the weight's description,
        # kept once read above, is not a kernel)
        assert m.kernel_policy == "auto" and m.qmeta["kernel"] == "auto" and set(m._kernels) <= {"qweight"}
    x = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        auto(x)
    assert auto.lm.model.layers[0].self_attn.q_proj.kernel != "dequant-fp32"  # the fast kernels after it
