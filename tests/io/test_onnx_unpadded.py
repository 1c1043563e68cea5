"""ONNX files that run a BERT-style encoder on each batch's real tokens (``export_onnx(remove_padding=True)``):
the padded model's outputs at every batch and sequence length the file meets, in onnxruntime and OpenVINO."""

import numpy as np
import onnx
import pytest
import torch

import bitladder
from bitladder import Act, Int
from bitladder.errors import BitladderError
from bitladder.io.onnx_export import export_onnx
from tests.nn.test_unpad import batch, tiny_bert

ort = pytest.importorskip("onnxruntime")

#: (sentence lengths, padded width): the example's shape, others, a batch without padding, sentences without
#: any token, and a batch with no token at all
SHAPES = [([3, 5, 1], None), ([7], None), ([2, 2, 2, 2], None), ([0, 4], 6), ([9, 1, 1, 1, 3], 12), ([0, 0], 3)]


def _feeds(lengths, width):
    ids, mask = batch(lengths, width)
    return ids, mask, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_an_unpadded_file_gives_the_padded_models_outputs_at_any_shape(tmp_path):
    bert = tiny_bert()
    ids, mask = batch([3, 5, 1])
    path = export_onnx(bert, {"input_ids": ids, "attention_mask": mask}, tmp_path / "u.onnx", 17,
                       remove_padding=True)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "NonZero" in ops and "ScatterND" not in ops  # tokens gathered once, re-padded by Gather
    for lengths, width in SHAPES:
        ids, mask, feeds = _feeds(lengths, width)
        with torch.inference_mode():
            want = (bert(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]).numpy()
        np.testing.assert_allclose(_run(path, feeds), want, atol=2e-5, err_msg=str(lengths))


def test_a_static_int8_encoder_keeps_its_numerics_without_padding(tmp_path):
    bert = tiny_bert()
    calib = [dict(zip(("input_ids", "attention_mask"), batch([6, 4, 9, 2]))) for _ in range(4)]
    # the pooler stays float: an unpadded encoder returns the hidden states only, so its file has no pooler
    q = bitladder.quantize(bert, Int(8, act=Act(smoothquant=0.5)), calib=calib, exclude=["*pooler*"])
    ex = dict(zip(("input_ids", "attention_mask"), batch([3, 5, 1])))  # a bare Hugging Face model, by name
    files = {g: {r: export_onnx(q, ex, tmp_path / f"{g}-{r}.onnx", 21, static_gemm=g, remove_padding=r)
                 for r in (False, True)} for g in ("integer", "qdq")}
    for gemm, pair in files.items():
        counts = [sum(n.op_type in ("MatMulInteger", "QuantizeLinear") for n in onnx.load(str(p)).graph.node)
                  for p in pair.values()]
        assert counts[0] == counts[1] > 0, gemm  # every layer took the same integer rule
        for lengths, width in SHAPES[:5]:
            _, mask, feeds = _feeds(lengths, width)
            padded, unpadded = (_run(p, feeds) for p in pair.values())
            real = mask.bool().numpy()
            # the same grids on the same rows: equal up to float rounding and a rare code at a tie
            assert np.abs(unpadded[real] - padded[real]).mean() < 1e-3, (gemm, lengths)
            assert not unpadded[~real].any()


def test_openvino_reads_the_unpadded_file(tmp_path):
    ov = pytest.importorskip("openvino")
    bert = tiny_bert()
    ids, mask = batch([3, 5, 1])
    path = export_onnx(bert, {"input_ids": ids, "attention_mask": mask}, tmp_path / "u.onnx", 17,
                       remove_padding=True)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    for lengths, width in SHAPES:
        _, _, feeds = _feeds(lengths, width)
        np.testing.assert_allclose(compiled(feeds)[0], _run(path, feeds), atol=2e-5, err_msg=str(lengths))


def test_a_model_without_an_encoder_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(BitladderError, match="BERT-style encoder"):
        export_onnx(torch.nn.Linear(4, 4), torch.zeros(2, 4), tmp_path / "l.onnx", remove_padding=True)
    assert not list(tmp_path.iterdir())
