import pytest
import torch

from bitladder.methods.prune.budget import flops, params
from bitladder.methods.prune.sources import from_encoder, from_graph
from bitladder.methods.prune.structured import ChannelPrune, prune_channels

from tests.methods.prune.nets import resnetish
from tests.methods.prune.test_transformer import batch, tiny


def test_encoder_groups_are_heads_and_ffn_neurons_per_layer():
    src = from_encoder(tiny(), "l2", exclude=["*.layer.1:ffn"])
    assert [g.layers for g in src.groups] == [["encoder.encoder.layer.0:heads"], ["encoder.encoder.layer.0:ffn"],
                                              ["encoder.encoder.layer.1:heads"]]
    assert [g.n for g in src.groups] == [4, 64, 4] and all(g.scores.mean() == pytest.approx(1) for g in src.groups)
    assert "encoder.encoder.layer.1:ffn" in src.skipped


def test_graph_groups_scores_have_mean_one_and_exclude_freezes():
    src = from_graph(resnetish(), torch.randn(1, 3, 16, 16), "l1", exclude=["branch_a"])
    assert all(g.scores.mean() == pytest.approx(1, rel=1e-5) for g in src.groups)
    assert src.skipped["branch_a"] == "branch_a is not selected (include / exclude)"
    assert ["attn:heads"] in [g.layers for g in src.groups]


def test_tiny_encoder_to_half_the_flops():
    m, b = tiny(), batch()
    p, rep = prune_channels(m, ChannelPrune(0.5, target="flops"), b)
    assert 0.45 <= flops(p, b) / flops(m, b) <= 0.5 and params(p) < params(m)
    assert p(**b).shape == m(**b).shape


def test_minilm_heads_and_ffn_to_half_the_flops(minilm_spec):
    b = {k: v[:4, :32] for k, v in minilm_spec.eval_batches[0].items()}  # a small batch keeps this quick
    m = minilm_spec.model
    p, rep = prune_channels(m, ChannelPrune(0.5, target="flops"), b)
    assert 0.45 <= flops(p, b) / flops(m, b) <= 0.5
    state = lambda model: sum(t.numel() for t in model.state_dict().values())
    assert state(p) < 0.85 * state(m)  # embeddings (12 M of 22 M) are not pruned
    assert any(k.endswith(":heads") and a < n for k, (n, a) in rep["pruned"].items())
    assert any(k.endswith(":ffn") and a < n for k, (n, a) in rep["pruned"].items())
    with torch.no_grad():
        out = p(**b)
    assert out.shape == m(**b).shape and torch.isfinite(out).all()


def test_taylor_on_an_encoder_uses_its_dropout_and_falls_back_without(caplog):
    src = from_encoder(tiny(dropout=0.1), "taylor", batches=[batch()])
    assert all(g.scores.std() > 0 for g in src.groups)
    with caplog.at_level("WARNING", logger="bitladder"):
        from_encoder(tiny(dropout=0.0), "taylor", batches=[batch()])
    assert "using l1" in caplog.text


def test_pruned_encoder_reloads_from_its_artifact_and_exports_to_onnx(tmp_path):
    import bitladder
    from bitladder.io.artifact import load
    from bitladder.io.onnx_export import export_onnx
    from bitladder.io.structure import describe

    ort = pytest.importorskip("onnxruntime")
    m, b = tiny(), batch()
    p, _ = prune_channels(m, ChannelPrune(0.5, target="flops"), b)
    path = bitladder.save(p, tmp_path / "e.safetensors", structure=describe(p, tiny()))
    back = load(path, model=tiny())
    with torch.no_grad():
        assert torch.equal(back(**b), p(**b))
        ref = p(**b).numpy()
    onnx = export_onnx(back, b, tmp_path / "e.onnx")
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feed = {i.name: b[i.name].numpy() for i in sess.get_inputs()}
    assert abs(sess.run(None, feed)[0] - ref).max() < 1e-4
