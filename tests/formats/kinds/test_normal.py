import pytest
import torch

import bitladder
from bitladder.errors import BitladderError
from bitladder.formats.kinds.normal import levels
from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QTYPES
from bitladder.tensor.quantized import QuantizedTensor

# NF4 as published with QLoRA (Dettmers et al. 2023, appendix E)
PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_levels_are_the_published_nf4_table():
    torch.testing.assert_close(levels(4), torch.tensor(PUBLISHED), atol=1e-6, rtol=0)


def test_every_weight_becomes_its_nearest_level_times_its_block_scale():
    w = torch.randn(32, 128)
    qt = QuantizedTensor.from_float(w, "nf4", Layout("group", group=64))
    assert qt.nbytes == 32 * 128 // 2 + 32 * 2 * 2  # 4-bit codes + one fp16 scale per group
    scale = qt.scale.float().repeat_interleave(64, dim=1)
    d = qt.dequantize()
    on_level = (d / scale).unsqueeze(-1) - levels(4)
    assert float(on_level.abs().min(dim=-1).values.max()) < 1e-6
    gaps = levels(4).diff().max()
    assert bool(((d - w).abs() <= scale * gaps / 2 + 1e-6).all())


def test_nf4_beats_int4_on_normal_weights_at_the_same_size():
    w = torch.randn(256, 256)
    lay = Layout("group", group=64)
    nf = QuantizedTensor.from_float(w, "nf4", lay)
    i4 = QuantizedTensor.from_float(w, "int4", lay)
    assert nf.nbytes == i4.nbytes
    assert float((nf.dequantize() - w).norm()) < 0.9 * float((i4.dequantize() - w).norm())


def test_nf4_rung_quantises_saves_and_reloads_a_model(tmp_path):
    from bitladder.pipeline.ladder.rungs import parse_rung

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    q = bitladder.quantize(model, parse_rung("nf4-g32"))
    assert q[0].qweight.qtype.name == "nf4" and q[0].kernel == "dequant-fp32"
    x = torch.randn(4, 64)
    assert float((q(x) - model(x)).norm() / model(x).norm()) < 0.15
    path = bitladder.save(q, tmp_path / "nf4.safetensors")
    assert torch.equal(bitladder.load(path, model=model)(x), q(x))


def test_nf4_has_no_sparse_storage_and_no_onnx_rule(tmp_path):
    w = torch.randn(8, 64)
    w[:, ::2] = 0
    assert QuantizedTensor.from_float(w, "nf4").mask is None  # code 0 is the level -1, not zero
    from bitladder.io.onnx_export import export_onnx

    q = bitladder.quantize(torch.nn.Sequential(torch.nn.Linear(64, 8)), bitladder.Format("nf4"))
    with pytest.raises(BitladderError, match="normal weights .*nf4.* have no ONNX export rule"):
        export_onnx(q, torch.randn(2, 64), tmp_path / "m.onnx")


def test_format_config_refuses_formats_that_have_their_own_config():
    with pytest.raises(BitladderError, match="int4 is a int format: use Int"):
        bitladder.Format("int4")
    assert QTYPES["nf4"].bits == 4
