"""MiniLM exported with per-token dynamic int8 activations (SmoothQuant 0.65 on the LayerNorm-fed layers):
standard operators, plain onnxruntime, the issue's fidelity floor. Slow (quantise + export + 256 sentences in
onnxruntime)."""

import onnx
import pytest
import torch

from bitladder.io.onnx_export import export_onnx
from bitladder.kernels.fbgemm_w8a8 import act_levels
from bitladder.pipeline.bench.minilm import _bitladder, _session
from bitladder.pipeline.bench.minilm_rungs import W8A8_SQ
from bitladder.pipeline.measure.evaluate import fidelity, outputs

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_minilm_w8a8_per_token_onnx_keeps_cosine_0999(tmp_path):
    from bitladder.zoo import minilm

    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    q = _bitladder(spec, W8A8_SQ, spec.calib_batches)
    b = spec.latency_batch
    path = export_onnx(q, {k: v[:2] for k, v in b.items()}, tmp_path / "w8a8.onnx", 21, "dynamic")
    graph = onnx.load(str(path)).graph
    # 6 blocks x (q, k, v, attention out, FFN up, FFN down); the pooler is unused and not exported
    assert [n.op_type for n in graph.node].count("MatMulInteger") == 36 and not any(n.domain for n in graph.node)
    # q, k and v share one SmoothQuant scale, so one quantised input: 4 preparations per block, not 6
    blocked = [n for n in graph.node
               if n.op_type == "QuantizeLinear" and any(a.name == "block_size" for a in n.attribute)]
    assert len(blocked) == 6 * 4
    fid = fidelity(spec, outputs(_session(path), spec.eval_batches), ref)
    assert fid["fidelity"] >= 0.999 and fid["cos_min"] >= 0.995  # measured 0.9992 / 0.998
    assert path.stat().st_size < 0.26 * 4 * sum(p.numel() for p in spec.model.parameters())
    with torch.no_grad():  # torch's kernel and the file agree where both round activations to 8 bits
        tq = fidelity(spec, outputs(q, spec.eval_batches), ref)
    assert fid["fidelity"] >= tq["fidelity"] - 5e-4  # without VNNI the kernel keeps 7 bits (0.998), the file 8
    if act_levels() == 255:
        assert abs(tq["fidelity"] - fid["fidelity"]) < 5e-4


@pytest.mark.slow
def test_minilm_static_file_without_padding_matches_the_padded_file(tmp_path):
    from bitladder.pipeline.bench.minilm_rungs import W8A8_OUTLIERS, W8A8_SQ80
    from bitladder.zoo import minilm

    spec = minilm.spec()
    ref = outputs(spec.model, spec.eval_batches)
    q = _bitladder(spec, W8A8_SQ80, spec.calib_batches, ffn_down=W8A8_OUTLIERS)
    ex = {k: v[:2] for k, v in spec.latency_batch.items()}
    padded, unpadded = (export_onnx(q, ex, tmp_path / f"{r}.onnx", 21, static_gemm="qdq", remove_padding=r)
                        for r in (False, True))
    got = {p: outputs(_session(p), spec.eval_batches) for p in (padded, unpadded)}
    fid, fid_padded = (fidelity(spec, got[p], ref)["fidelity"] for p in (unpadded, padded))
    assert fid >= 0.999 and abs(fid - fid_padded) < 1e-4  # measured 0.99910 both
    # float rounding moves a few codes of the static grids, as it does between torch and either file
    # (cosine down to 0.9993 a sentence there): the same model, not the same bits
    agree = (got[unpadded] * got[padded]).sum(-1)
    assert agree.mean() >= 0.9999 and agree.min() >= 0.999
