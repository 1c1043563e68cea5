"""A BERT-family encoder run on its batch's real tokens only.

A batch of sentences is padded to its longest one; the encoder then spends every Linear layer, LayerNorm,
activation and residual add on padding rows whose outputs nobody reads (the pooling masks them), and attention on
padding keys and queries; on the built-in corpus most of MiniLM's rows are padding (docs/results/notes.md,
'Padding removed'). :class:`Unpadded` packs the real tokens into one (tokens, width) matrix after the embeddings
and runs every token-wise layer on it; attention runs sentence by sentence on each one's own tokens (no mask is
left to apply), or in one call where the batch has no padding. The result at the real tokens is the wrapped
encoder's, up to float rounding; padding rows come back as zeros. The layers themselves are called as they are (float, quantised,
rotated), so it composes with any rung. Per-token kernels whose rows share one grid per call then see only real
rows.

Traced (ONNX export: ``export_onnx(remove_padding=True)``), it takes a form with no per-sentence loop: the real
tokens are gathered once, and each layer's attention runs on q, k and v gathered back into the padded layout.

It is a run-time wrapper: it holds no weights of its own and is not stored in an artifact. Inference only
(dropout is left out, so training mode is refused); absolute position embeddings and self-attention only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from bitladder.errors import BitladderError

_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.self.num_attention_heads",
          "attention.self.attention_head_size", "attention.output.dense",
          "attention.output.LayerNorm", "intermediate.dense", "intermediate.intermediate_act_fn", "output.dense",
          "output.LayerNorm")


def _missing(layer: nn.Module) -> str | None:
    """The first part of a BERT layer that ``layer`` lacks (None: it has them all)."""
    for path in _PARTS:
        obj = layer
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if obj is None:
            return path
    return None


class Unpadded(nn.Module):
    """``encoder`` (a Hugging Face BERT-style model: ``embeddings`` and ``encoder.layer``) on real tokens only."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        layers = getattr(getattr(encoder, "encoder", None), "layer", None)
        if not _bert_like(encoder):
            raise BitladderError(f"removing padding needs a BERT-style encoder (embeddings, encoder.layer); got "
                                 f"{type(encoder).__name__}")
        config = getattr(encoder, "config", None)
        if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
            raise BitladderError("removing padding supports encoders with self-attention only, not decoders")
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise BitladderError("removing padding supports absolute position embeddings; this encoder has "
                                 f"{config.position_embedding_type!r} ones")
        for i, layer in enumerate(layers):
            why = _missing(layer)
            if why is not None:
                raise BitladderError(f"removing padding: layer {i} ({type(layer).__name__}) has no {why}")
        self.encoder = encoder
        self.train(encoder.training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **kw):
        from transformers.modeling_outputs import BaseModelOutput

        if self.training:
            raise BitladderError("a model without padding is for inference: call .eval() first (dropout is left out)")
        extra = sorted(k for k, v in kw.items() if v is not None and k != "return_dict")
        if extra:
            raise BitladderError(f"a model without padding takes input_ids, attention_mask and token_type_ids; "
                                 f"got {', '.join(extra)}")
        if torch.jit.is_tracing():  # an exported graph: its shapes are symbolic, so no loop over sentences
            return BaseModelOutput(last_hidden_state=self._graph(input_ids, attention_mask, token_type_ids))
        b, n = input_ids.shape
        h = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids).reshape(b * n, -1)
        if attention_mask is None or bool(attention_mask.all()):  # no padding (one sentence): nothing to move
            idx, lengths = None, [n] * b
            x = h
        else:
            idx = attention_mask.reshape(-1).nonzero().squeeze(1)  # row by row: each sentence's tokens together
            lengths = attention_mask.bool().sum(1).tolist()  # a float or bool mask too
            x = h.index_select(0, idx)
            if not len(x):  # no sentence has a token
                return BaseModelOutput(last_hidden_state=h.new_zeros(b, n, h.shape[1]))
        attend = _uniform(lengths[0], len(lengths)) if idx is None else _by_sentence(lengths)
        for layer in self.encoder.encoder.layer:
            x = _layer(layer, x, attend)
        out = x if idx is None else x.new_zeros(b * n, x.shape[1]).index_copy(0, idx, x)
        return BaseModelOutput(last_hidden_state=out.view(b, n, -1))

    def _graph(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """The same computation in a form that traces into a graph for any batch and sequence length (ONNX
        export): the real tokens are gathered once (NonZero, Gather), every token-wise layer runs on them, and
        each layer's queries, keys and values are gathered back into the padded layout for one masked attention
        product, whose real rows are gathered again; runtimes have no per-sentence loop."""
        b, n = input_ids.shape
        h = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (batch, seq, width)
        sa = self.encoder.encoder.layer[0].attention.self
        heads, d = sa.num_attention_heads, sa.attention_head_size
        flat = h.reshape(-1, heads * d)  # widths as constants: few shape nodes per layer in the graph
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.reshape(-1) != 0
        idx = keep.nonzero().squeeze(1)
        # each padded position's row in [the packed tokens; one zero row]: its own token, or the zero row
        count = keep.long()
        src = torch.where(keep, count.cumsum(0) - 1, count.sum())
        zero = torch.zeros(1, 3 * heads * d, dtype=h.dtype)  # one row of q, k and v side by side
        # finite additive mask on the padding keys: no row turns NaN, so no guard node per Softmax
        bias = (attention_mask == 0).to(h.dtype)[:, None, None, :] * torch.finfo(h.dtype).min
        x = flat.index_select(0, idx).unsqueeze(0)  # (1, tokens, width): Linear layers export as MatMul, as padded
        for layer in self.encoder.encoder.layer:
            x = _layer(layer, x, _repadded(idx, src, zero, bias, b, n))
        return torch.cat([x.reshape(-1, heads * d), zero[:, : heads * d]]).index_select(0, src).view_as(h)


def _split(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., tokens, heads * d) -> (..., heads, tokens, d)."""
    return t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads).transpose(-3, -2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """(..., heads, tokens, d) -> (..., tokens, heads * d)."""
    t = t.transpose(-3, -2)
    return t.reshape(*t.shape[:-2], -1)


def _by_sentence(lengths: list[int]):
    """Attention of packed (tokens, width) projections, each sentence of ``lengths`` on its own tokens: no mask,
    since no padding is left (a padded batch's attention is mostly padding)."""
    def attend(q, k, v, heads, scale):
        return torch.cat([_merge(F.scaled_dot_product_attention(_split(qi, heads), _split(ki, heads),
                                                                _split(vi, heads), scale=scale))
                          for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths)) if len(qi)])
    return attend


def _uniform(n: int, sentences: int):
    """Attention of ``sentences`` unpadded sentences of ``n`` tokens each, packed: one batched call."""
    def attend(q, k, v, heads, scale):
        q, k, v = (_split(t.reshape(sentences, n, -1), heads) for t in (q, k, v))
        return _merge(F.scaled_dot_product_attention(q, k, v, scale=scale)).reshape(sentences * n, -1)
    return attend


def _repadded(idx: torch.Tensor, src: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor, b: int, n: int):
    """Attention of (1, tokens, width) projections in the padded (``b`` sentences, ``n`` positions) layout: q, k
    and v side by side, with a ``zero`` row, gathered by ``src`` in one Gather (not a scatter), masked by the
    additive ``bias``; the real tokens (``idx``) are gathered back."""
    width = zero.shape[1] // 3

    def attend(q, k, v, heads, scale):
        qkv = torch.cat([torch.cat([q * scale, k, v], -1).reshape(-1, 3 * width), zero]).index_select(0, src)
        qkv = qkv.view(b, n, 3, heads, width // heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # each (batch, heads, seq, d)
        scores = torch.matmul(q, k.transpose(-2, -1)) + bias
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        return ctx.reshape(-1, width).index_select(0, idx).unsqueeze(0)
    return attend


def _layer(layer: nn.Module, x: torch.Tensor, attend) -> torch.Tensor:
    """One BERT layer on packed tokens ``x``; ``attend(q, k, v, heads, scale)`` mixes them."""
    sa = layer.attention.self
    heads, scale = sa.num_attention_heads, getattr(sa, "scaling", sa.attention_head_size**-0.5)
    ctx = attend(sa.query(x), sa.key(x), sa.value(x), heads, scale)
    so = layer.attention.output
    a = so.LayerNorm(so.dense(ctx) + x)
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate.intermediate_act_fn(
        layer.intermediate.dense(a))) + a)


def _bert_like(m: nn.Module) -> bool:
    return hasattr(m, "embeddings") and bool(getattr(getattr(m, "encoder", None), "layer", None))


def without_padding(model: nn.Module) -> nn.Module:
    """``model`` with its BERT-style encoder wrapped in :class:`Unpadded`: the encoder itself, or a model that
    holds one as a direct child (a sentence encoder's pooling around it). The modules are shared, not copied;
    the wrapper is a shallow copy of ``model``, which is left as it is."""
    if _bert_like(model):
        return Unpadded(model)
    for name, child in model.named_children():
        if _bert_like(child):
            out = copy.copy(model)
            out._modules = dict(model._modules)  # the copy's own child table: the caller's model keeps its encoder
            setattr(out, name, Unpadded(child))
            return out
    raise BitladderError(f"removing padding needs a BERT-style encoder (embeddings, encoder.layer) or a model "
                         f"holding one; {type(model).__name__} is neither")
