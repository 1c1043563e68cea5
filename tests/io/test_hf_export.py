"""compressed-tensors export: transformers loads the folder back to bitladder's own logits and perplexity,
the weights are stored packed, and what the format cannot hold is refused with nothing written."""

import json

import pytest
import torch

import bitladder
from bitladder import AWQ, GPTQ, HQQ, Act, Int, Ternary
from bitladder.errors import BitladderError
from bitladder.io.hf_export import export_hf
from tests.io.exact import exact
from tests.io.tiny_lm import calib_batches as _calib
from tests.io.tiny_lm import tiny_llama as _tiny

pytest.importorskip("compressed_tensors", reason="compressed-tensors (deploy extra) is not installed")


def _reload(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _nll(logits, x):
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


@pytest.mark.parametrize("cfg, bits", [(Int(bits=4, group=32, method=GPTQ()), 4), (Int(bits=8), 8),
                                       (Int(bits=3, group=32), 3),
                                       (Int(bits=4, group=32, method=AWQ(grid=5)), 4)])  # AWQ folded
def test_transformers_loads_bitladders_model(tmp_path, cfg, bits):
    q = bitladder.quantize(_tiny(), cfg, exclude=["lm.model.embed_tokens"], calib=_calib())
    out = export_hf(q, tmp_path / "ckpt")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    assert {g["weights"]["num_bits"] for g in qc["config_groups"].values()} == {bits}
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        ref, got = exact(q)(x), _reload(out)(input_ids=x).logits
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    assert abs(_nll(got, x).exp() - _nll(ref, x).exp()) < 1e-4  # the same perplexity
    # packed: the Linear weights take about bits/32 of their float bytes
    floats = sum(m.weight.numel() for n, m in _tiny().named_modules() if isinstance(m, torch.nn.Linear)) * 4
    embed = 256 * 64 * 4
    assert (out / "model.safetensors").stat().st_size - embed < floats * (bits + 1.5) / 32 + 20_000


def test_mixed_formats_become_config_groups(tmp_path):
    q = bitladder.quantize(_tiny(), Int(bits=4, group=32), include=["*mlp*"])
    q = bitladder.quantize(q, Int(bits=8), include=["*self_attn*"])
    out = export_hf(q, tmp_path / "ckpt")
    groups = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]
    assert sorted(g["weights"]["num_bits"] for g in groups.values()) == [4, 8]
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.allclose(_reload(out)(input_ids=x).logits, exact(q)(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg, match", [
    (Ternary(), "compressed-tensors holds"),
    (Int(bits=4, group=32, symmetric=False), "zero points do not load back"),
    (Int(bits=4, group=32, symmetric=False, method=HQQ()), "zero points"),
    (Int(bits=4, group=32, method=AWQ(fold=False)), "input scale"),
    (Int(bits=8, act=Act()), "activations on a calibrated grid"),
])
def test_what_compressed_tensors_cannot_hold_is_refused(tmp_path, cfg, match):
    q = bitladder.quantize(_tiny(), cfg, exclude=["lm.model.embed_tokens"], calib=_calib())
    with pytest.raises(BitladderError, match=match):
        export_hf(q, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_with_files_is_not_overwritten(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "keep.txt").write_text("mine")
    q = bitladder.quantize(_tiny(), Int(bits=8), exclude=["lm.model.embed_tokens"])
    with pytest.raises(BitladderError, match="not an empty folder"):
        export_hf(q, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "keep.txt").read_text() == "mine"


def test_non_transformers_models_are_refused(tmp_path, digits_spec):
    with pytest.raises(BitladderError, match="transformers model"):
        export_hf(digits_spec.model, tmp_path / "b")


def test_a_quantised_head_of_a_tied_model_is_written_untied(tmp_path):
    # the embedding stays float, the head is int4: reloaded as tied, the head would silently become the embedding
    q = bitladder.quantize(_tiny(tied=True), Int(bits=4, group=32), exclude=["lm.model.embed_tokens"])
    out = export_hf(q, tmp_path / "ckpt")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.allclose(_reload(out)(input_ids=x).logits, exact(q)(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_a_quantised_embedding_goes_in_as_its_dequantised_float(tmp_path, caplog, tied):
    # what `bitladder ladder` writes quantises the embedding too: the folder holds its exact values, in float
    q = bitladder.quantize(_tiny(tied=tied), Int(bits=4, group=32))
    with caplog.at_level("WARNING", logger="bitladder"):
        out = export_hf(q, tmp_path / "ckpt")
    assert "model.embed_tokens written in float" in caplog.text
    back = _reload(out)
    assert torch.equal(back.model.embed_tokens.weight, q.lm.model.embed_tokens.qweight.dequantize())
    x = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.allclose(back(input_ids=x).logits, exact(q)(x), atol=1e-5, rtol=1e-5)


def test_only_a_quantised_embedding_is_refused(tmp_path):
    q = bitladder.quantize(_tiny(), Int(bits=4, group=32), include=["lm.model.embed_tokens"])
    with pytest.raises(BitladderError, match="only embeddings are quantised"):
        export_hf(q, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []
