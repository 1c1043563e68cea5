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

It is a run-time wrapper: it holds no weights of its own and is not stored in an artifact. Inference only
(dropout is left out, so training mode is refused); absolute position embeddings and self-attention only.
"""

from __future__ import annotations

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
        if not hasattr(encoder, "embeddings") or not layers:
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
        for layer in self.encoder.encoder.layer:
            x = _layer(layer, x, lengths, idx is None)
        out = x if idx is None else x.new_zeros(b * n, x.shape[1]).index_copy(0, idx, x)
        return BaseModelOutput(last_hidden_state=out.view(b, n, -1))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """Attention of one sentence's packed (tokens, heads * d) projections, or of a (sentences, tokens, ...) batch
    of equal lengths: no mask, since no padding is left."""
    lead, width = q.shape[:-1], q.shape[-1]

    def split(t: torch.Tensor) -> torch.Tensor:  # (..., tokens, heads * d) -> (..., heads, tokens, d)
        return t.reshape(*lead, heads, width // heads).transpose(-3, -2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
    return out.transpose(-3, -2).reshape(*lead, width)


def _layer(layer: nn.Module, x: torch.Tensor, lengths: list[int], uniform: bool) -> torch.Tensor:
    """One BERT layer on packed tokens ``x`` (tokens, width), sentence after sentence of ``lengths`` tokens
    (``uniform``: all of one length, the batch unpadded)."""
    sa = layer.attention.self
    heads, scale = sa.num_attention_heads, getattr(sa, "scaling", sa.attention_head_size**-0.5)
    q, k, v = sa.query(x), sa.key(x), sa.value(x)
    if uniform:  # one batched call
        n = lengths[0]
        ctx = _attend(*(t.reshape(len(lengths), n, -1) for t in (q, k, v)), heads, scale).reshape(x.shape[0], -1)
    else:  # each sentence on its own tokens: a padded batch's attention is mostly padding
        ctx = torch.cat([_attend(qi, ki, vi, heads, scale) for qi, ki, vi in
                         zip(q.split(lengths), k.split(lengths), v.split(lengths)) if len(qi)])
    so = layer.attention.output
    a = so.LayerNorm(so.dense(ctx) + x)
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate.intermediate_act_fn(
        layer.intermediate.dense(a))) + a)
