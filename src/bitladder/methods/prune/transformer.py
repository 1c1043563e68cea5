"""Structured pruning of BERT-style encoders: whole attention heads and FFN neurons removed physically.

A layer is BERT-style when it has ``attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense`` as ``nn.Linear`` (Hugging Face BERT, MiniLM, RoBERTa, ...).
Per layer, the least important ``heads`` fraction of heads (at least one is always kept) loses its
query/key/value rows and its columns of the attention output projection, and the least important
``ffn`` fraction of intermediate neurons loses its row of ``intermediate.dense`` and its column of
``output.dense``. transformers 5 has no ``prune_heads`` any more; its attention reshapes with ``-1``
heads, so the sliced layers run unchanged (``num_attention_heads`` / ``all_head_size`` are updated too).

Importance per head or neuron, over all its weights: "l1" (sum |w|), "l2" (sum w^2) or "taylor"
(|sum w * dL/dw| per batch, summed over ``batches`` batches, Molchanov 2019). The loss is the model's own
distillation loss against itself: at the teacher that loss and its gradient are zero, so the student
runs in train mode (its dropout is the perturbation). A model without dropout would get zero gradients:
it falls back to "l1", which the log and the report say.

>>> import torch
>>> from transformers import BertConfig, BertModel
>>> cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
...                  intermediate_size=64)
>>> p, report = prune_heads_ffn(BertModel(cfg), HeadFFNPrune(heads=0.5, ffn=0.25))
>>> report["heads"]["encoder.layer.0"], report["ffn"]["encoder.layer.0"]
((4, 2), (64, 48))
>>> p.encoder.layer[0].attention.self.query.weight.shape
torch.Size([16, 32])
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError

log = logging.getLogger("bitladder")
IMPORTANCE = ("l1", "l2", "taylor")


@dataclass(frozen=True)
class HeadFFNPrune:
    """Remove ``heads`` of each layer's attention heads and ``ffn`` of its FFN neurons (fractions in
    [0, 1)), least important first by ``importance``; "taylor" uses ``batches`` training batches
    and ``seed`` for the dropout draws."""

    heads: float = 0.25
    ffn: float = 0.25
    importance: str = "l1"
    batches: int = 4
    seed: int = 0  # taylor: the dropout draws (the global RNG is left as it was)
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for key in ("heads", "ffn"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise BitladderError(f"{key} must be a fraction in [0, 1), got {v!r}")
        if self.importance not in IMPORTANCE:
            raise BitladderError(f"importance must be one of {', '.join(IMPORTANCE)}, got {self.importance!r}")
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise BitladderError(f"batches must be an integer >= 1, got {self.batches!r}")

    def to_dict(self) -> dict:
        """The config as a dict with its ``type`` and ``version``, as artifacts record it."""
        return {"type": "HeadFFNPrune", "version": self.version, **asdict(self)}


def _linears(layer: nn.Module) -> tuple[nn.Module, ...] | None:
    """(query, key, value, attention out, intermediate, output) of a BERT-style layer, else None."""
    paths = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")
    try:
        mods = tuple(layer.get_submodule(p) for p in paths)
    except AttributeError:
        return None
    if not hasattr(layer.attention.self, "attention_head_size"):
        return None
    return mods


def encoder_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BERT-style layers of ``model`` by name; an error if there are none or one is quantised."""
    found = [(n, m) for n, m in model.named_modules() if _linears(m) is not None]
    if not found:
        raise BitladderError("no BERT-style encoder layers found (attention.self.query/key/value, "
                             "attention.output.dense, intermediate.dense, output.dense); head/FFN pruning "
                             "supports Hugging Face BERT-style encoders")
    for name, layer in found:
        if not all(type(lin) is nn.Linear for lin in _linears(layer)):
            raise BitladderError(f"layer {name!r} is not plain nn.Linear (quantised or factorised?); "
                                 "prune heads and FFN neurons first, then quantise or factorise")
    return found


def _head_index(keep: torch.Tensor, d: int) -> torch.Tensor:
    return (keep[:, None] * d + torch.arange(d)[None, :]).reshape(-1)


def head_ffn_scores(layer: nn.Module, term) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-head, per-neuron) sums of ``term(linear)`` over each group's rows / columns."""
    q, k, v, o, inter, out = _linears(layer)
    d = layer.attention.self.attention_head_size
    rows = term(q) + term(k) + term(v)  # (heads * d, hidden)
    heads = rows.reshape(-1, d, rows.shape[1]).sum((1, 2)) + term(o).reshape(o.weight.shape[0], -1, d).sum((0, 2))
    ffn = term(inter).sum(1) + term(out).sum(0)
    return heads, ffn


def taylor_scores(model: nn.Module, layers: list, batches: list[Any], config: HeadFFNPrune,
            metric: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (per-head, per-neuron) |sum w * dL/dw| over ``config.batches`` self-distillation batches."""
    from bitladder.methods.train.trainer import Train, loss_for
    from bitladder.nn.select import run

    if not batches:
        raise BitladderError("taylor importance needs training batches (batches=...)")
    teacher = copy.deepcopy(model).eval()
    totals: dict[str, list[torch.Tensor]] = {}
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        for b in batches[: config.batches]:
            model.zero_grad()
            with torch.no_grad():
                soft = run(teacher, b)
            loss_for(metric, run(model, b), soft, None, Train()).backward()
            with torch.no_grad():
                for name, layer in layers:
                    h, f = head_ffn_scores(layer, lambda lin: lin.weight * lin.weight.grad)
                    prev = totals.get(name, [0, 0])
                    totals[name] = [prev[0] + h.abs(), prev[1] + f.abs()]
    model.zero_grad(set_to_none=True)
    model.eval()
    return {n: (h, f) for n, (h, f) in totals.items()}


@torch.no_grad()
def keep_rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    """Keep output rows ``idx`` of ``lin`` (weight and bias), in place."""
    lin.weight = nn.Parameter(lin.weight[idx].clone())
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias[idx].clone())
    lin.out_features = len(idx)


@torch.no_grad()
def keep_cols(lin: nn.Linear, idx: torch.Tensor) -> None:
    """Keep input columns ``idx`` of ``lin``, in place."""
    lin.weight = nn.Parameter(lin.weight[:, idx].clone())
    lin.in_features = len(idx)


def keep_qkvo_heads(q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear, keep: torch.Tensor, d: int) -> None:
    """Keep heads ``keep`` (indices, ``d`` channels each): q/k/v rows and o columns, in place."""
    idx = _head_index(keep, d)
    for lin in (q, k, v):
        keep_rows(lin, idx)
    keep_cols(o, idx)


def keep_heads(layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the heads ``keep`` (indices) of a BERT-style layer, in place."""
    q, k, v, o, _, _ = _linears(layer)
    att = layer.attention.self
    idx = _head_index(keep, att.attention_head_size)
    keep_qkvo_heads(q, k, v, o, keep, att.attention_head_size)
    att.num_attention_heads = len(keep)
    att.all_head_size = len(idx)


def keep_ffn(layer: nn.Module, keep: torch.Tensor) -> None:
    """Keep only the intermediate neurons ``keep`` (indices) of a BERT-style layer, in place."""
    _, _, _, _, inter, out = _linears(layer)
    keep_rows(inter, keep)
    keep_cols(out, keep)


def _top(score: torch.Tensor, ratio: float) -> torch.Tensor:
    n = score.numel()
    return score.topk(max(1, n - int(ratio * n))).indices.sort().values


def prune_heads_ffn(model: nn.Module, config: HeadFFNPrune, batches: list[Any] | None = None,
                    metric: str = "cosine") -> tuple[nn.Module, dict]:
    """A copy of ``model`` with heads and FFN neurons removed, and a report {"heads": {layer: (before,
    after)}, "ffn": {layer: (before, after)}, "importance": what was used}. ``batches`` and ``metric``
    (the distillation loss: "cosine" for embedders, "accuracy" for classifiers) serve "taylor" only."""
    model = copy.deepcopy(model).eval()
    layers = encoder_layers(model)
    used = config.importance
    if used == "taylor" and not any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        log.warning("taylor importance: the model has no dropout, so its self-distillation gradient is zero; "
                    "using l1")
        used = "l1 (taylor needs dropout: the model has none)"
    if used == "taylor":
        scores = taylor_scores(model, layers, batches or [], config, metric)
    if used != "taylor":
        term = (lambda lin: lin.weight.abs()) if used.startswith("l1") else (lambda lin: lin.weight.pow(2))
        with torch.no_grad():
            scores = {name: head_ffn_scores(layer, term) for name, layer in layers}
    report: dict = {"heads": {}, "ffn": {}, "importance": used}
    for name, layer in layers:
        head_s, ffn_s = scores[name]
        keep_h, keep_f = _top(head_s, config.heads), _top(ffn_s, config.ffn)
        if len(keep_h) < len(head_s):
            keep_heads(layer, keep_h)
        if len(keep_f) < len(ffn_s):
            keep_ffn(layer, keep_f)
        report["heads"][name] = (len(head_s), len(keep_h))
        report["ffn"][name] = (len(ffn_s), len(keep_f))
    return model, report
