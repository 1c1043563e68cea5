"""Where a per-channel input scale can live instead of a multiply in front of the layer: fold rules.

AWQ divides a layer's inputs by ``s`` per channel. Kept as an explicit multiply, the model runs anywhere
bitladder runs but no deployment format can hold it (compressed-tensors, GGUF). Folded into the layer
that produces the input, it costs nothing and exports as a plain model: an RMSNorm / LayerNorm scales
its output channels by its weight (and bias), a Linear its output rows by their scales and bias, and
attention's output is linear in ``v_proj``'s rows and the SwiGLU product in ``up_proj``'s. Which layer
feeds which cannot be read off a module tree, so each model family registers its rules here; a family
without rules keeps the explicit multiply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bitladder.nn.base import QuantModule

FAMILIES: dict[str, tuple["Rule", ...]] = {}  # Hugging Face model_type -> its fold rules


@dataclass(frozen=True)
class Rule:
    """``producer``'s output is exactly what ``consumers`` read (templates under the Hugging Face model's root;
    ``{i}`` is each decoder layer). ``kind``: "norm" (scale the weight and bias), "rows" (a Linear's output
    rows) or "heads" (``v_proj``'s rows, repeated over the query heads that share a key/value head).
    ``untied_only``: the rule holds only where the LM head does not share the embedding's weight."""

    producer: str
    consumers: tuple[str, ...]
    kind: str
    untied_only: bool = False


@dataclass(frozen=True)
class Fold:
    """One rule on one model: full module names, and ``tie`` (consumer input channel -> producer row)
    where several input channels come from one producer row (grouped-query attention)."""

    producer: str
    consumers: tuple[str, ...]
    kind: str
    tie: torch.Tensor | None = None


def family(*model_types: str):
    """Register the rules returned by the decorated function for ``model_types``."""

    def register(fn: Callable[[], tuple[Rule, ...]]):
        for t in model_types:
            FAMILIES[t] = fn()
        return fn

    return register


@family("llama", "mistral", "qwen2", "qwen3")
def _llama() -> tuple[Rule, ...]:
    layer = "model.layers.{i}."
    return (Rule(layer + "input_layernorm", tuple(layer + f"self_attn.{p}_proj" for p in "qkv"), "norm"),
            Rule(layer + "self_attn.v_proj", (layer + "self_attn.o_proj",), "heads"),
            Rule(layer + "post_attention_layernorm", (layer + "mlp.gate_proj", layer + "mlp.up_proj"), "norm"),
            Rule(layer + "mlp.up_proj", (layer + "mlp.down_proj",), "rows"),
            # a tied head shares its weight with the embedding, which must not change
            Rule("model.norm", ("lm_head",), "norm", untied_only=True))


def _hf_root(model: nn.Module) -> tuple[str, object] | None:
    for name, m in model.named_modules():
        cfg = getattr(m, "config", None)
        if getattr(cfg, "model_type", None) in FAMILIES:
            return name, cfg
    return None


def _head_tie(cfg) -> torch.Tensor | None:
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if kv == heads:
        return None
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    j = torch.arange(heads * hd)
    return (j // hd) // (heads // kv) * hd + j % hd


def fold_plan(model: nn.Module) -> dict[str, Fold]:
    """Each consumer layer of ``model`` that has a registered producer, with its :class:`Fold` (empty when the
    model's family has no rules)."""
    found = _hf_root(model)
    if found is None:
        return {}
    root, cfg = found
    pre = root + "." if root else ""
    modules = dict(model.named_modules())
    plan: dict[str, Fold] = {}
    for rule in FAMILIES[cfg.model_type]:
        if rule.untied_only and getattr(cfg, "tie_word_embeddings", False):
            continue
        blocks = range(cfg.num_hidden_layers) if "{i}" in rule.producer else [0]
        for i in blocks:
            producer = pre + rule.producer.format(i=i)
            consumers = tuple(pre + c.format(i=i) for c in rule.consumers)
            if producer not in modules or not all(c in modules for c in consumers):
                continue
            fold = Fold(producer, consumers, rule.kind, _head_tie(cfg) if rule.kind == "heads" else None)
            plan.update({c: fold for c in consumers})
    return plan


def tied_mean(v: torch.Tensor, tie: torch.Tensor | None) -> torch.Tensor:
    """``v`` (per consumer input channel) averaged over the channels one producer row feeds."""
    if tie is None:
        return v
    n = int(tie.max()) + 1
    sums = torch.zeros(n, dtype=v.dtype).index_add_(0, tie, v)
    return (sums / torch.bincount(tie, minlength=n).to(v.dtype))[tie]


def can_fold(model: nn.Module, fold: Fold) -> bool:
    """Whether the producer can take a scale: a norm with a weight, or a Linear (float, or quantised with
    per-output-row scales)."""
    p = model.get_submodule(fold.producer)
    if fold.kind == "norm":
        w = getattr(p, "weight", None)
        return isinstance(w, torch.Tensor) and w.dim() == 1
    if isinstance(p, QuantModule):
        return p.weight_axis == 0 and p.can_scale_outputs()
    return isinstance(p, nn.Linear)


@torch.no_grad()
def apply_fold(model: nn.Module, fold: Fold, in_scale: torch.Tensor) -> None:
    """Multiply the producer's output channels by ``in_scale`` (per consumer input channel), so the consumers
    read ``x * in_scale`` with no multiply of their own."""
    p = model.get_submodule(fold.producer)
    t = in_scale.float()
    if fold.tie is not None:  # one value per producer row: the consumer channels it feeds share it
        t = torch.zeros(int(fold.tie.max()) + 1).index_copy_(0, fold.tie, t)
    if isinstance(p, QuantModule):
        p.scale_outputs(t)
        return
    shape = (-1, 1) if fold.kind != "norm" else (-1,)
    p.weight.mul_(t.reshape(shape).to(p.weight.dtype))
    if getattr(p, "bias", None) is not None:
        p.bias.mul_(t.to(p.bias.dtype))
