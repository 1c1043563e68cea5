import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError, Int
from bitladder.methods.prune.transformer import (
    HeadFFNPrune,
    encoder_layers,
    prune_heads_ffn,
)
from bitladder.zoo.minilm import SentenceEncoder


def tiny(dropout: float = 0.1) -> SentenceEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return SentenceEncoder(BertModel(cfg)).eval()


def batch(n: int = 3, seq: int = 7, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, -2:] = 0  # padding in one row
    return {"input_ids": torch.randint(1, 60, (n, seq), generator=g), "attention_mask": mask}


def test_shapes_and_counts_after_pruning():
    m = tiny()
    p, rep = prune_heads_ffn(m, HeadFFNPrune(heads=0.25, ffn=0.5))
    for name, layer in encoder_layers(p):
        att = layer.attention.self
        assert rep["heads"][name] == (4, 3) and rep["ffn"][name] == (64, 32)
        assert att.num_attention_heads == 3 and att.all_head_size == 24
        assert att.query.weight.shape == (24, 32) and att.value.bias.shape == (24,)
        assert layer.attention.output.dense.weight.shape == (32, 24)
        assert layer.intermediate.dense.weight.shape == (32, 32) and layer.output.dense.weight.shape == (32, 32)
    params = lambda mod: sum(t.numel() for t in mod.parameters())
    assert params(p) < params(m)
    out = p(**batch())
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    assert m.encoder.encoder.layer[0].attention.self.query.weight.shape == (32, 32)  # the input is untouched


def test_kept_heads_and_neurons_are_the_important_ones():
    m = tiny()
    layer = m.encoder.encoder.layer[0]
    with torch.no_grad():
        layer.attention.self.query.weight[8:16] *= 0.01  # head 1 is the weakest by weight norm
        layer.intermediate.dense.weight[5] *= 0.01
        layer.output.dense.weight[:, 5] *= 0.01
    p, _ = prune_heads_ffn(m, HeadFFNPrune(heads=0.25, ffn=0.02, importance="l2"))
    q = p.encoder.encoder.layer[0].attention.self.query.weight
    w = layer.attention.self.query.weight
    assert torch.equal(q, torch.cat([w[:8], w[16:]]))
    assert p.encoder.encoder.layer[0].intermediate.dense.weight.shape[0] == 63
    assert not any(torch.equal(r, layer.intermediate.dense.weight[5]) for r in
                   p.encoder.encoder.layer[0].intermediate.dense.weight)


def test_zero_ratios_are_the_identity():
    m = tiny()
    p, rep = prune_heads_ffn(m, HeadFFNPrune(heads=0.0, ffn=0.0))
    x = batch()
    assert torch.equal(p(**x), m(**x))
    assert all(before == after for before, after in rep["heads"].values())


def test_at_least_one_head_is_kept():
    p, rep = prune_heads_ffn(tiny(), HeadFFNPrune(heads=0.99, ffn=0.99))
    assert all(after == 1 for _, after in rep["heads"].values())
    assert all(after == 1 for _, after in rep["ffn"].values())
    assert torch.isfinite(p(**batch())).all()


def test_taylor_uses_the_distillation_loss_and_falls_back_without_dropout():
    data = [batch(seed=s) for s in range(3)]
    p, rep = prune_heads_ffn(tiny(), HeadFFNPrune(importance="taylor", batches=2), data)
    assert rep["importance"] == "taylor" and not p.training
    assert all(par.grad is None for par in p.parameters())
    state = torch.random.get_rng_state()
    again, _ = prune_heads_ffn(tiny(), HeadFFNPrune(importance="taylor", batches=2), data)
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded dropout draws, global RNG untouched
    assert all(torch.equal(x, y) for x, y in zip(p.state_dict().values(), again.state_dict().values()))
    _, rep = prune_heads_ffn(tiny(dropout=0.0), HeadFFNPrune(importance="taylor"), data)
    assert rep["importance"].startswith("l1")
    with pytest.raises(BitladderError, match="needs training batches"):
        prune_heads_ffn(tiny(), HeadFFNPrune(importance="taylor"))


@pytest.mark.parametrize("kw, msg", [({"heads": 1.0}, "heads must be"), ({"ffn": -0.1}, "ffn must be"),
                                     ({"heads": "a"}, "heads must be"), ({"importance": "fisher"}, "importance"),
                                     ({"batches": 0}, "batches must be")])
def test_bad_config_is_one_clear_error(kw, msg):
    with pytest.raises(BitladderError, match=msg):
        HeadFFNPrune(**kw)


def test_models_without_bert_layers_or_already_quantised_are_refused():
    with pytest.raises(BitladderError, match="no BERT-style encoder layers"):
        prune_heads_ffn(nn.Sequential(nn.Linear(4, 4)), HeadFFNPrune())
    with pytest.raises(BitladderError, match="prune heads and FFN neurons first"):
        prune_heads_ffn(bitladder.quantize(tiny(), Int(bits=8)), HeadFFNPrune())


def test_pruned_then_quantised_round_trips_through_an_artifact(tmp_path):
    from bitladder.io.artifact import load, save
    from bitladder.io.structure import describe

    p, _ = prune_heads_ffn(tiny(), HeadFFNPrune(heads=0.5, ffn=0.25))
    q = bitladder.quantize(p, Int(bits=8))
    path = save(q, tmp_path / "p.safetensors", structure=describe(p, tiny()))
    back = load(path, model=tiny())  # a fresh full-size model: the recorded structure reshapes it
    x = batch()
    assert torch.equal(back(**x), q(**x))
    assert back.encoder.encoder.layer[1].attention.self.key.qmeta["shape"] == [16, 32]


@pytest.mark.slow
def test_minilm_pruned_quantised_reloads_from_the_builtin_factory(minilm_spec, tmp_path):
    from bitladder.io.artifact import load, save
    from bitladder.io.structure import describe
    from bitladder.pipeline.measure.evaluate import fidelity, outputs

    spec = minilm_spec
    p, rep = prune_heads_ffn(spec.model, HeadFFNPrune(importance="taylor", batches=2), spec.train_batches)
    assert set(rep["heads"].values()) == {(12, 9)} and set(rep["ffn"].values()) == {(1536, 1152)}
    ref, out = outputs(spec.model, spec.eval_batches[:1]), outputs(p, spec.eval_batches[:1])
    assert fidelity(spec, out, ref)["fidelity"] > 0.7  # before any distillation
    q = bitladder.quantize(p, Int(bits=8))
    path = save(q, tmp_path / "m.safetensors", source="minilm", structure=describe(p, spec.fresh_model()))
    back = bitladder.load(path)  # the built-in factory + the recorded structure, nothing else
    x = spec.eval_batches[0]
    assert torch.equal(back(**x), q(**x))
