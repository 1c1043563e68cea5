"""Fold rules: where a per-channel input scale goes instead of a multiply, and AWQ that uses them."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitladder
from bitladder import AWQ, Int
from bitladder.methods.quantize.fold import apply_fold, can_fold, fold_plan, tied_mean
from bitladder.nn.base import QuantModule
from bitladder.zoo.causal_lm import CausalLM
from tests.io.tiny_lm import calib_batches, tiny_llama


def tiny_qwen2(tied: bool = False) -> CausalLM:
    """Qwen2: Llama's layout with biases on q, k and v (the v bias must scale with its rows)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied)
    lm = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # transformers initialises biases to 0: make them matter
        for layer in lm.model.layers:
            layer.self_attn.v_proj.bias.normal_()
    return CausalLM(lm).eval()


BUILDERS = {"llama": tiny_llama, "qwen2": tiny_qwen2}


def test_plan_names_the_producer_of_every_llama_layer_input():
    model = tiny_llama()
    plan = fold_plan(model)
    pre = "lm.model.layers.1."
    assert plan[pre + "self_attn.k_proj"].producer == pre + "input_layernorm"
    assert plan[pre + "self_attn.o_proj"].producer == pre + "self_attn.v_proj"
    assert plan[pre + "mlp.up_proj"].producer == pre + "post_attention_layernorm"
    assert plan[pre + "mlp.down_proj"].producer == pre + "mlp.up_proj"
    assert plan["lm.lm_head"].producer == "lm.model.norm"
    # 4 query heads read 2 key/value heads of 16 channels: o_proj's channel 16 (head 1) comes from v's row 0
    tie = plan[pre + "self_attn.o_proj"].tie
    assert tie.tolist() == [*range(16), *range(16), *range(16, 32), *range(16, 32)]
    assert "lm.lm_head" not in fold_plan(tiny_llama(tied=True))  # the embedding must not change with the head
    assert fold_plan(torch.nn.Sequential(torch.nn.Linear(4, 4))) == {}  # no family: no rules


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tied=st.booleans(), family=st.sampled_from(sorted(BUILDERS)))
def test_every_fold_keeps_the_float_model_the_same(seed, tied, family):
    # the producer takes in_scale, the consumers' weights its inverse: the function must not change
    model = BUILDERS[family](tied=tied)
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x)
    g = torch.Generator().manual_seed(seed)
    for fold in {id(f): f for f in fold_plan(model).values()}.values():
        k = model.get_submodule(fold.consumers[0]).in_features
        in_scale = tied_mean(torch.rand(k, generator=g) * 3 + 0.2, fold.tie)
        assert can_fold(model, fold)
        apply_fold(model, fold, in_scale)
        with torch.no_grad():
            for c in fold.consumers:
                model.get_submodule(c).weight.div_(in_scale)
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-4, rtol=1e-4)


def test_a_quantised_producer_scales_its_rows_and_keeps_its_codes():
    lin = torch.nn.Linear(64, 8)
    q = bitladder.quantize(lin, Int(4, group=32))
    codes, x, t = q.qweight.codes(), torch.randn(5, 64), torch.rand(8) + 0.5
    with torch.no_grad():
        before = q(x)
    q.scale_outputs(t)
    assert torch.equal(q.qweight.codes(), codes)
    with torch.no_grad():  # the scales are rounded to fp16: about 1e-3 relative
        assert torch.allclose(q(x), before * t, rtol=2e-3, atol=2e-3)
    whole = bitladder.quantize(torch.nn.Linear(64, 8), Int(8, granularity="tensor"))
    assert not whole.can_scale_outputs()
    with pytest.raises(ValueError, match="no per-output-row scales"):
        whole.scale_outputs(t)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_awq_on_a_llama_family_model_leaves_no_multiply_and_stays_close(family):
    model = BUILDERS[family]()
    calib = calib_batches()
    folded = bitladder.quantize(model, Int(4, group=32, method=AWQ(grid=10)), calib=calib)
    kept = bitladder.quantize(model, Int(4, group=32, method=AWQ(grid=10, fold=False)), calib=calib)
    rtn = bitladder.quantize(model, Int(4, group=32), calib=calib)
    layers = [m for m in folded.modules() if isinstance(m, QuantModule) and m.qmeta["method"] == "awq"]
    assert len(layers) == 15 and not any("in_scale" in m.qmeta for m in layers)
    assert sum("in_scale" in m.qmeta for m in kept.modules() if isinstance(m, QuantModule)) == 15
    # the norms now carry the scales; the float model passed in is untouched
    assert not torch.equal(folded.lm.model.layers[0].input_layernorm.weight,
                           model.lm.model.layers[0].input_layernorm.weight)
    x = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x)
        err = {k: float((m(x) - ref).pow(2).mean()) for k, m in
               [("folded", folded), ("kept", kept), ("rtn", rtn)]}
    # one scale for q, k, v (and for gate, up) costs a little against a scale per layer
    assert err["folded"] < 1.25 * err["kept"] and err["folded"] < err["rtn"]


def test_awq_config_round_trips_with_fold():
    from bitladder.methods.quantize.methods import method_from_dict

    assert method_from_dict(AWQ(fold=False).to_dict()) == AWQ(fold=False)
    old = {"type": "AWQ", "version": 1, "grid": 20, "clip_search": True}  # written before ``fold`` existed
    assert method_from_dict(old) == AWQ()
