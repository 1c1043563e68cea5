import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitladder
from bitladder import Act, Int
from bitladder.errors import BitladderError
from bitladder.nn.unpad import Unpadded, without_padding


def tiny_bert(**kw):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=40, attn_implementation="sdpa", **kw)
    return BertModel(cfg).eval()


def batch(lengths, width=None):
    width = width or max(lengths)
    ids = torch.randint(1, 64, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=6).filter(any), st.integers(0, 4))
def test_real_tokens_are_the_padded_models_and_padding_rows_are_zero(lengths, extra):
    bert = tiny_bert()
    ids, mask = batch(lengths, max(lengths) + extra)  # extra: columns that are padding in every row
    types = torch.randint(0, 2, ids.shape)
    with torch.inference_mode():
        want = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = Unpadded(bert)(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-5)
    assert not got[~real].any()


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=6), st.integers(0, 4))
def test_the_graph_form_computes_what_the_padded_model_does(lengths, extra):
    # the form that ONNX export traces: real tokens gathered once, attention re-padded per layer
    bert = tiny_bert()
    ids, mask = batch(lengths, max(lengths) + extra or 1)
    types = torch.randint(0, 2, ids.shape)
    with torch.inference_mode():
        want = bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = Unpadded(bert)._graph(ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-5)
    assert not got[~real].any()


def test_without_padding_wraps_the_encoder_or_the_model_holding_it():
    bert = tiny_bert()
    assert isinstance(without_padding(bert), Unpadded)

    class Pooled(nn.Module):
        def __init__(self, enc):
            super().__init__()
            self.head, self.enc = nn.Linear(32, 2), enc

        def forward(self, input_ids, attention_mask):
            return self.head(self.enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])

    model = Pooled(bert)
    wrapped = without_padding(model)
    assert isinstance(wrapped.enc, Unpadded) and wrapped.head is model.head
    assert model.enc is bert  # the caller's model keeps its own encoder
    ids, mask = batch([5, 2, 4])
    with torch.inference_mode():
        torch.testing.assert_close(wrapped(ids, mask), model(ids, mask), atol=2e-5, rtol=1e-5)
    with pytest.raises(BitladderError, match="BERT-style encoder .* Sequential is neither"):
        without_padding(nn.Sequential(nn.Linear(4, 4)))


def test_bool_and_float_masks_are_read_as_the_integer_one():
    bert = tiny_bert()
    ids, mask = batch([4, 2, 5])
    with torch.inference_mode():
        want = Unpadded(bert)(input_ids=ids, attention_mask=mask).last_hidden_state
        for other in (mask.bool(), mask.float()):
            torch.testing.assert_close(Unpadded(bert)(input_ids=ids, attention_mask=other).last_hidden_state, want)


def test_a_batch_without_any_token_gives_zeros():
    ids, mask = batch([0, 0], 5)
    with torch.inference_mode():
        got = Unpadded(tiny_bert())(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == (2, 5, 32) and not got.any()


def test_a_batch_without_padding_runs_as_it_is():
    bert = tiny_bert()
    ids = torch.randint(1, 64, (3, 7))
    with torch.inference_mode():
        want = bert(input_ids=ids).last_hidden_state
        for mask in (None, torch.ones_like(ids)):  # no mask, or one that keeps every token
            got = Unpadded(bert)(input_ids=ids, attention_mask=mask).last_hidden_state
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_minilm_embeddings_unchanged_and_rows_cut_to_the_real_tokens(minilm_spec):
    from bitladder.zoo.minilm import without_padding

    b = minilm_spec.latency_batch
    seen = []
    model = without_padding(minilm_spec.model)
    with torch.inference_mode():
        want = minilm_spec.model(**b)
        hook = model.encoder.encoder.encoder.layer[0].intermediate.dense.register_forward_hook(
            lambda m, i, o: seen.append(i[0].shape))  # the layers are shared: only the unpadded call is seen
        got = model(**b)
    hook.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert seen == [torch.Size([int(b["attention_mask"].sum()), 384])]  # the FFN saw only real tokens
    assert int(b["attention_mask"].sum()) < b["attention_mask"].numel()  # the batch is padded at all


def test_a_quantised_minilm_without_padding_keeps_its_fidelity(minilm_spec):
    from bitladder.zoo.minilm import without_padding

    q = bitladder.quantize(minilm_spec.model, Int(8, act=Act(dynamic="token"), rotate=64))
    b = minilm_spec.eval_batches[0]
    with torch.inference_mode():
        ref, padded, unpadded = minilm_spec.model(**b), q(**b), without_padding(q)(**b)
    cos_padded, cos_unpadded = (padded * ref).sum(-1), (unpadded * ref).sum(-1)
    assert cos_unpadded.mean() >= 0.999 and cos_unpadded.min() >= 0.99
    assert cos_unpadded.mean() >= cos_padded.mean() - 1e-4  # no worse than the padded model


def test_refusals_name_what_is_missing():
    with pytest.raises(BitladderError, match="BERT-style encoder"):
        Unpadded(nn.Linear(4, 4))
    bert = tiny_bert()
    del bert.encoder.layer[1].intermediate.intermediate_act_fn
    with pytest.raises(BitladderError, match="layer 1 .* no intermediate.intermediate_act_fn"):
        Unpadded(bert)
    with pytest.raises(BitladderError, match="relative"):
        Unpadded(tiny_bert(position_embedding_type="relative_key"))
    with pytest.raises(BitladderError, match="decoders"):
        Unpadded(tiny_bert(is_decoder=True))
    ids, mask = batch([3, 2])
    with pytest.raises(BitladderError, match=r"call \.eval\(\)"):
        Unpadded(tiny_bert()).train()(input_ids=ids, attention_mask=mask)
    with pytest.raises(BitladderError, match="got inputs_embeds"):
        Unpadded(tiny_bert())(input_ids=ids, attention_mask=mask, inputs_embeds=torch.zeros(2, 3, 32))
    from bitladder.zoo.minilm import without_padding

    with pytest.raises(BitladderError, match="takes a sentence encoder; got BertModel"):
        without_padding(tiny_bert())
