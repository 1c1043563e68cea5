"""GGUF export of Llama-architecture causal LMs, for llama.cpp and everything that reads GGUF.

Quantised weights keep bitladder's own codes and scales (:mod:`.gguf_blocks` picks the ggml block type
that holds each exactly); float tensors are written as F32. Names and metadata follow llama.cpp's
``llama`` architecture, including its rotary layout: the rows of q and k are reordered within each head
from Hugging Face's half-split order to interleaved pairs. AWQ's default already folds its scales into the
model (:mod:`bitladder.methods.quantize.fold`); input scales still kept on layers that read an RMSNorm
(q, k, v; gate, up; the head) are folded here into that norm's weight when they are equal. Per-token dynamic activations
need nothing stored: llama.cpp quantises activations to 8 bits per 32 values itself. Anything GGUF cannot
hold (static activation grids, input scales elsewhere, biases, formats without a block type) is refused
with the layer and the reason, never written as a different model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.gguf_blocks import encode
from bitladder.nn.base import QuantModule

ARCHS = ("llama", "mistral")  # Hugging Face model types written as llama.cpp's "llama"
_IN_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_NORM_FED = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
             "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}
_FINAL_NORM = {"model.norm": ("lm_head",)}


def hf_model(model: nn.Module) -> nn.Module:
    """The Hugging Face causal LM inside ``model`` (bitladder's wrapper keeps it as ``.lm``)."""
    hf = getattr(model, "lm", model)
    kind = getattr(getattr(hf, "config", None), "model_type", None)
    if kind not in ARCHS:
        raise BitladderError(f"GGUF export takes Llama-architecture causal LMs (model types {', '.join(ARCHS)}); "
                             f"got {type(hf).__name__} ({kind or 'no Hugging Face config'})")
    return hf


def rope_rows(n_head: int, rows: int) -> torch.Tensor:
    """Row order turning Hugging Face's q/k rows (each head: first halves, then second halves of the rotary
    pairs) into llama.cpp's (each head: pairs interleaved)."""
    hd = rows // n_head
    i = torch.arange(hd // 2)
    within = torch.stack([i, i + hd // 2], dim=1).reshape(-1)
    return (torch.arange(n_head).unsqueeze(1) * hd + within).reshape(-1)


def _gguf_names(hf: nn.Module) -> dict[str, str]:
    names = dict(_TOP)
    for i in range(hf.config.num_hidden_layers):
        names.update({f"model.layers.{i}.{k}": f"blk.{i}.{v}" for k, v in _IN_BLOCK.items()})
    if _same_weight(hf.lm_head, hf.model.embed_tokens):
        names.pop("lm_head")  # llama.cpp reads the output projection from token_embd when output is absent
    return names


def _same_weight(a: nn.Module, b: nn.Module) -> bool:
    """Whether two layers hold the same weight (tied, or quantised alike from a tied one)."""
    wa = a.qweight.dequantize() if isinstance(a, QuantModule) else a.weight
    wb = b.qweight.dequantize() if isinstance(b, QuantModule) else b.weight
    return wa is wb or (wa.shape == wb.shape and bool(torch.equal(wa, wb)))


def _check_layer(name: str, m: nn.Module) -> None:
    if getattr(m, "bias", None) is not None:
        raise BitladderError(f"layer {name!r} has a bias; llama.cpp's llama architecture has none")
    if isinstance(m, QuantModule) and "act" in m._qmeta:
        raise BitladderError(f"layer {name!r} quantises its activations on a calibrated grid "
                             f"({m._qmeta['act']['qtype']}); GGUF holds weights only and llama.cpp quantises "
                             f"activations its own way: export a weight-only or per-token model")


def _norm_scales(hf: nn.Module, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Each RMSNorm's weight with the shared input scale of the layers it feeds folded in."""
    groups = dict(_FINAL_NORM)
    for i in range(hf.config.num_hidden_layers):
        pre = f"model.layers.{i}."
        groups.update({pre + norm: tuple(pre + f for f in fed) for norm, fed in _NORM_FED.items()})
    foldable = {f for fed in groups.values() for f in fed}
    for name, m in modules.items():
        if "in_scale" in getattr(m, "_qmeta", {}) and name not in foldable:
            raise BitladderError(f"layer {name!r} multiplies its inputs by an input scale (AWQ / SmoothQuant) "
                                 f"that GGUF cannot hold: only the RMSNorms before q/k/v, gate/up and the output "
                                 f"can take one (use AWQ(fold=True), GPTQ or RTN, or exclude it)")
    out: dict[str, torch.Tensor] = {}
    for norm, fed in groups.items():
        scales = [modules[f].in_scale if "in_scale" in getattr(modules.get(f), "_qmeta", {}) else None
                  for f in fed if f in modules]
        if all(s is None for s in scales):
            continue
        if any(s is None or not torch.equal(s, scales[0]) for s in scales):
            raise BitladderError(f"layers {', '.join(fed)} have different input scales; GGUF can fold only "
                                 f"one shared scale into {norm}")
        out[norm] = modules[norm].weight.detach().float() * scales[0]
    return out


def _meta(writer, hf: nn.Module) -> None:
    cfg = hf.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise BitladderError(f"rope scaling {rope.get('rope_type')!r} is not written by this exporter; "
                             f"accepted: the default rotary embedding")
    heads = cfg.num_attention_heads
    writer.add_name(getattr(cfg, "name_or_path", "") or "bitladder")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.num_key_value_heads or heads)
    writer.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.vocab_size == 256:  # a byte vocabulary: SentencePiece-style byte tokens llama.cpp understands
        from gguf import TokenType
        writer.add_tokenizer_model("llama")
        writer.add_token_list([f"<0x{b:02X}>" for b in range(256)])
        writer.add_token_types([TokenType.BYTE] * 256)
        writer.add_token_scores([0.0] * 256)


def export_gguf(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` (a bitladder-quantised or float Llama-architecture causal LM) as a GGUF file.

    Returns the path; the file appears only once complete. Raises :class:`BitladderError` naming the
    layer and the reason for anything GGUF cannot hold exactly.
    """
    import gguf

    hf = hf_model(model)
    path = Path(path)
    names = _gguf_names(hf)
    modules = dict(hf.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise BitladderError(f"not a Llama layout: no module {missing[0]!r}")
    for n in names:
        _check_layer(n, modules[n])
    norms = _norm_scales(hf, modules)
    heads, kv = hf.config.num_attention_heads, hf.config.num_key_value_heads or hf.config.num_attention_heads
    tensors: list[tuple[str, np.ndarray, object]] = []
    for src, dst in names.items():
        m = modules[src]
        rows = None
        if dst.endswith(("attn_q", "attn_k")):
            rows = rope_rows(heads if dst.endswith("attn_q") else kv, m.qweight.shape[0] if isinstance(
                m, QuantModule) else m.weight.shape[0])
        if isinstance(m, QuantModule):
            data, bt = encode(m.qweight, src, rows)
            tensors.append((f"{dst}.weight", data, bt.ggml))
        else:
            w = norms.get(src, m.weight.detach().float())
            tensors.append((f"{dst}.weight", (w if rows is None else w[rows]).contiguous().numpy(), None))
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        _meta(writer, hf)
        for name, data, raw in tensors:
            writer.add_tensor(name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
