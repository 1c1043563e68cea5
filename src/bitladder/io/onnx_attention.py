"""Hugging Face attention written out for export as MatMul -> Add(mask) -> Softmax -> MatMul.

Hugging Face models run attention through torch's ``scaled_dot_product_attention`` ("sdpa"). Exported, its
boolean mask turns into ``-inf`` and every Softmax gets an ``IsNaN -> Where`` guard for rows with no key left.
The guard is two more nodes per layer on every call, and it hides the attention block from the runtimes'
pattern matchers: OpenVINO fuses the plain block into one attention kernel, onnxruntime runs fewer, larger
nodes. The exported (float twin) copy runs the same product with the additive, finite mask of the "eager"
implementation instead, so no row can turn NaN and no guard is needed; the query is scaled before the
product (a (seq x head) multiply, not one on the (seq x seq) scores). Measured: docs/results/notes.md,
'Attention in exported graphs'.

Attention with features this form does not have (logit soft-capping, attention sinks, position bias, a causal
product without a mask, dropout) stays on sdpa.
"""

from __future__ import annotations

import torch
from torch import nn

#: the name the implementation is registered under with transformers (its attention and mask registries)
NAME = "bitladder_plain"
#: attention keyword arguments that change the product: when one is set, the layer keeps sdpa
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
               **kwargs) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scaling + mask) v, heads of (batch, heads, seq, dim) in, (batch, seq, heads, dim) out."""
    causal = attention_mask is None and query.shape[2] > 1 and (
        kwargs["is_causal"] if kwargs.get("is_causal") is not None else getattr(module, "is_causal", True))
    if dropout or causal or any(kwargs.get(k) is not None for k in _UNSUPPORTED):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each key/value head serves a group
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(-2, -1))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:  # True = attend
            attention_mask = torch.zeros_like(attention_mask, dtype=scores.dtype).masked_fill(
                ~attention_mask, torch.finfo(scores.dtype).min)
        scores = scores + attention_mask
    out = torch.matmul(torch.softmax(scores, dim=-1), value)
    return out.transpose(1, 2).contiguous(), None


def _register() -> bool:
    """Register :data:`NAME` with transformers (idempotent); False where transformers is absent."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:
        return False
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return True


def plain_attention(model: nn.Module) -> int:
    """Switch every Hugging Face config in ``model`` that runs sdpa or eager attention to the plain form, in
    place (``model`` is the exporter's own copy); returns how many configs were switched."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and getattr(c, "_attn_implementation", None) in ("sdpa", "eager")}
    if not configs or not _register():
        return 0
    for c in configs.values():
        c._attn_implementation = NAME
    return len(configs)
