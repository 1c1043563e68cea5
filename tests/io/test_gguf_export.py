"""GGUF export: gguf's own reader and dequantiser give back exactly bitladder's weights, transformers' GGUF
loader runs the file to the same logits, and what GGUF cannot hold is refused with no file left."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitladder
from bitladder import AWQ, Act, GPTQ, HQQ, Int, Ternary
from bitladder.errors import BitladderError
from bitladder.io.gguf_blocks import BLOCK_TYPES
from bitladder.io.gguf_export import export_gguf, rope_rows
from bitladder.nn.base import QuantModule
from tests.io.exact import exact
from tests.io.tiny_lm import calib_batches as _calib
from tests.io.tiny_lm import tiny_llama as _tiny

gguf = pytest.importorskip("gguf", reason="the gguf package (deploy extra) is not installed")


def _read_back(path) -> dict[str, np.ndarray]:
    r = gguf.GGUFReader(str(path))
    return {t.name: (gguf.quants.dequantize(t.data, t.tensor_type), t.tensor_type.name) for t in r.tensors}


def _reload_logits(path, x):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    with torch.no_grad():
        return hf(input_ids=x).logits


@pytest.mark.parametrize("cfg, block", [
    (Int(bits=4, group=32), "Q4_0"),
    (Int(bits=8), "Q8_0"),
    (Int(bits=5, group=64), "Q5_0"),
    (Int(bits=3, group=32), "Q4_0"),
    (Int(bits=4, group=32, symmetric=False), None),  # Q4_1 where the block minimum is an fp16 number, else Q8_0
])
def test_reader_gives_back_exactly_bitladders_weights(tmp_path, cfg, block):
    q = bitladder.quantize(_tiny(), cfg)
    path = export_gguf(q, tmp_path / "m.gguf")
    back = _read_back(path)
    cfg_hf = q.lm.config
    checked = 0
    for name, m in q.lm.named_modules():
        if not isinstance(m, QuantModule):
            continue
        w = m.qweight.dequantize()
        key = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
               "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
               "embed_tokens": "token_embd", "lm_head": "output"}[name.split(".")[-1]]
        if key in ("attn_q", "attn_k"):
            w = w[rope_rows(cfg_hf.num_attention_heads if key == "attn_q" else cfg_hf.num_key_value_heads, len(w))]
        layer = f"blk.{name.split('.')[2]}." if ".layers." in name else ""
        data, kind = back[f"{layer}{key}.weight"]
        assert block is None or kind == block
        assert kind in {b.name for b in BLOCK_TYPES}
        assert np.array_equal(data.reshape(w.shape), w.numpy()), name  # bit for bit
        checked += 1
    assert checked == 2 * 7 + 2


def test_transformers_runs_the_file_to_bitladders_logits(tmp_path):
    q = bitladder.quantize(_tiny(), Int(bits=4, group=32, method=GPTQ()), calib=_calib())
    path = export_gguf(q, tmp_path / "m.gguf")
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        ref = exact(q)(x)
    assert torch.allclose(_reload_logits(path, x), ref, atol=1e-4, rtol=1e-4)
    r = gguf.GGUFReader(str(path))
    assert r.fields["general.architecture"].contents() == "llama"
    assert r.fields["tokenizer.ggml.tokens"].contents()[65] == "<0x41>"  # byte tokens llama.cpp understands
    # 4-bit codes + an fp16 scale per 32: the file is about 4.5 bits a weight, not 32
    n = sum(p.numel() for p in _tiny().parameters())
    assert path.stat().st_size < n * 4 * 0.2


def test_tied_embeddings_are_written_once_and_an_untied_head_is_kept(tmp_path):
    q = bitladder.quantize(_tiny(tied=True), Int(bits=8, group=32))  # both alike: still one weight
    export_gguf(q, tmp_path / "m.gguf")
    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert "token_embd.weight" in names and "output.weight" not in names
    # a float head beside a quantised embedding is another weight: written, and the file runs to its logits
    q = bitladder.quantize(_tiny(tied=True), Int(bits=8, group=32), exclude=["lm.lm_head"])
    path = export_gguf(q, tmp_path / "h.gguf")
    assert "output.weight" in {t.name for t in gguf.GGUFReader(str(path)).tensors}
    x = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        assert torch.allclose(_reload_logits(path, x), exact(q)(x), atol=1e-4, rtol=1e-4)


def test_awq_folded_into_the_model_exports_and_runs_to_its_logits(tmp_path):
    # AWQ's scales live in the RMSNorms and in v_proj / up_proj rows (grouped-query attention here): no multiply
    q = bitladder.quantize(_tiny(), Int(bits=4, group=32, method=AWQ(grid=5)), calib=_calib())
    assert not any("in_scale" in m._qmeta for m in q.modules() if isinstance(m, QuantModule))
    path = export_gguf(q, tmp_path / "m.gguf")
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        assert torch.allclose(_reload_logits(path, x), exact(q)(x), atol=1e-4, rtol=1e-4)


def test_an_awq_input_scale_folds_into_the_norm_before_it(tmp_path):
    # kept as a multiply, the output layer's scale still folds at export: it reads the final RMSNorm alone
    q = bitladder.quantize(_tiny(), Int(bits=4, group=32, method=AWQ(fold=False)), include=["lm.lm_head"],
                           calib=_calib())
    assert "in_scale" in q.lm.lm_head._qmeta
    path = export_gguf(q, tmp_path / "m.gguf")
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        ref = exact(q)(x)
    assert torch.allclose(_reload_logits(path, x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("include, match", [(None, "o_proj.*cannot hold"),
                                            (["*_proj"], "different input scales")])
def test_awq_scales_gguf_cannot_hold_are_refused(tmp_path, include, match):
    # scales kept per layer (fold=False): q, k and v differ, and o_proj / down_proj have no norm
    exclude = ["*o_proj", "*down_proj"] if include else None
    q = bitladder.quantize(_tiny(), Int(bits=4, group=32, method=AWQ(fold=False)), include=include, exclude=exclude,
                           calib=_calib())
    with pytest.raises(BitladderError, match=match):
        export_gguf(q, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cfg, match", [
    (Ternary(), "no exact ggml block type"),
    (Int(bits=4, group=16), "group of a multiple of 32"),
    (Int(bits=4, group=32, symmetric=False, method=HQQ()), "float zero points"),
    (Int(bits=4, group=32, scale_dtype="fp32"), "not fp16 numbers"),
    (Int(bits=8, act=Act()), "quantises its activations"),  # static: llama.cpp has no fixed input grid
])
def test_what_gguf_cannot_hold_is_refused_and_nothing_written(tmp_path, cfg, match):
    q = bitladder.quantize(_tiny(), cfg, calib=_calib())
    with pytest.raises(BitladderError, match=match):
        export_gguf(q, tmp_path / "m.gguf")
    assert list(tmp_path.iterdir()) == []


def test_not_a_llama_is_refused(tmp_path, digits_spec):
    with pytest.raises(BitladderError, match="Llama-architecture"):
        export_gguf(digits_spec.model, tmp_path / "m.gguf")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(BLOCK_TYPES), st.integers(0, 2**31 - 1))
def test_every_block_type_decodes_to_its_values(bt, seed):
    g = np.random.default_rng(seed)
    v = g.integers(bt.lo, bt.hi + 1, size=(5, 32))
    d = g.standard_normal(5).astype(np.float16).astype(np.float32)
    m = (g.standard_normal(5).astype(np.float16).astype(np.float32)) if bt.with_min else None
    raw = bt.encode(v, d, m).reshape(1, -1)
    back = gguf.quants.dequantize(raw, bt.ggml).reshape(5, 32)
    want = d[:, None] * v + (0 if m is None else m[:, None])
    assert np.array_equal(back, want.astype(np.float32))
