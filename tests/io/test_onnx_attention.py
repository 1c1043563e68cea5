"""The exported copy's attention (io/onnx_attention.py): sdpa's product in plain operators, no NaN guard."""

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitladder.io.onnx_attention import NAME, _attention, plain_attention
from bitladder.io.onnx_export import export_onnx
from tests.io.tiny_lm import tiny_llama

pytest.importorskip("transformers")
from transformers.integrations.sdpa_attention import sdpa_attention_forward  # noqa: E402


class Heads(nn.Module):
    """What sdpa reads from an attention module: whether it is causal and the key/value head groups."""

    def __init__(self, groups: int, causal: bool = False) -> None:
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, causal


def qkv(batch, heads, groups, q_len, kv_len, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads * groups, q_len, 16, generator=g)
    return q, torch.randn(batch, heads, kv_len, 16, generator=g), torch.randn(batch, heads, kv_len, 16, generator=g)


def mask(kind, batch, q_len, kv_len, seed):
    """None, a boolean padding mask (True = attend; every row keeps a key) or the additive float form of one
    that is also causal, both (batch, 1, q, kv)."""
    if kind == "none":
        return None
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(batch, 1, 1, kv_len, generator=g) > 0.3
    keep[..., 0] = True
    keep = keep.expand(batch, 1, q_len, kv_len)
    if kind == "bool":
        return keep
    keep = keep & torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)
    return torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), heads=st.integers(1, 3), groups=st.sampled_from([1, 2, 4]),
       q_len=st.integers(1, 9), extra=st.integers(0, 4), kind=st.sampled_from(["none", "bool", "float"]),
       scaling=st.sampled_from([None, 0.1]), seed=st.integers(0, 2**16))
def test_same_product_as_sdpa(batch, heads, groups, q_len, extra, kind, scaling, seed):
    q, k, v = qkv(batch, heads, groups, q_len, q_len + extra, seed)
    m = mask(kind, batch, q_len, q_len + extra, seed)
    module = Heads(groups)
    got, _ = _attention(module, q, k, v, m, scaling=scaling)
    want, _ = sdpa_attention_forward(module, q, k, v, m, scaling=scaling)
    assert got.shape == want.shape == (batch, q_len, heads * groups, 16)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_what_the_plain_form_lacks_stays_on_sdpa():
    q, k, v = qkv(2, 2, 1, 5, 5, 0)
    causal = Heads(1, causal=True)
    got, _ = _attention(causal, q, k, v, None)  # causal without a mask: sdpa's is_causal product
    torch.testing.assert_close(got, sdpa_attention_forward(causal, q, k, v, None)[0])
    assert not torch.allclose(got, _attention(Heads(1), q, k, v, None)[0])
    bias = torch.randn(1, 2, 5, 5)
    got, _ = _attention(Heads(1), q, k, v, None, position_bias=bias)
    torch.testing.assert_close(got, sdpa_attention_forward(Heads(1), q, k, v, None, position_bias=bias)[0])
    with pytest.raises(ValueError, match="softcap"):  # sdpa's own refusal, not a silently uncapped product
        _attention(Heads(1), q, k, v, None, softcap=30.0)


class Encoder(nn.Module):
    """A small random BERT run by sdpa, returning its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=32)
        cfg._attn_implementation = "sdpa"
        self.bert = BertModel(cfg, add_pooling_layer=False).eval()

    def forward(self, input_ids, attention_mask):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def ort_run(path, feed):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in feed.items()})[0])


def test_padded_encoder_exports_without_nan_guard(tmp_path):
    model = Encoder()
    ids = torch.randint(0, 100, (3, 11), generator=torch.Generator().manual_seed(2))
    am = torch.ones(3, 11, dtype=torch.int64)
    am[1, 7:] = 0
    am[2, 3:] = 0
    path = export_onnx(model, {"input_ids": ids, "attention_mask": am}, tmp_path / "bert.onnx", 17)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "IsNaN" not in ops and ops.count("Softmax") == 2
    assert model.bert.config._attn_implementation == "sdpa"  # the user's model is not switched
    for feed in ({"input_ids": ids, "attention_mask": am}, {"input_ids": ids[1:2, :7], "attention_mask": am[1:2, :7]}):
        with torch.no_grad():
            want = model(**feed)
        got = ort_run(path, feed)
        keep = feed["attention_mask"].bool()  # padded positions' outputs are not defined by either
        torch.testing.assert_close(got[keep], want[keep], atol=1e-4, rtol=1e-4)


def test_grouped_query_causal_lm_exports_and_matches(tmp_path):
    model = tiny_llama()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    path = export_onnx(model, x, tmp_path / "llama.onnx", 17)
    assert "IsNaN" not in [n.op_type for n in onnx.load(str(path)).graph.node]
    for feed in (x, x[:1, :5]):
        with torch.no_grad():
            want = model(feed)
        torch.testing.assert_close(ort_run(path, {"input": feed}), want, atol=1e-4, rtol=1e-4)


def test_only_sdpa_and_eager_configs_are_switched():
    model = Encoder()
    assert plain_attention(model) == 1 and model.bert.config._attn_implementation == NAME
    assert plain_attention(model) == 0  # already plain
    assert plain_attention(nn.Linear(2, 2)) == 0
