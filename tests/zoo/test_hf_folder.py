"""A Hugging Face causal-LM folder as a model: built from its shards, resolved by path, rebuilt from hf: sources."""

import json

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder.zoo import hf_folder
from bitladder.zoo.registry import build_builtin, resolve
from tests.zoo.llama_folders import llama_folder


@pytest.mark.parametrize("tied", [True, False])
def test_build_equals_transformers(tmp_path, tied):
    from transformers import LlamaForCausalLM

    folder = llama_folder(tmp_path / "m", layers=2, tied=tied)
    ref = LlamaForCausalLM.from_pretrained(str(folder)).eval()
    model = build_builtin(hf_folder.source_of(folder))
    x = torch.randint(0, 300, (2, 16))
    assert torch.allclose(model(x), ref(input_ids=x).logits, atol=1e-5)
    assert (model.lm.lm_head.weight is model.lm.model.embed_tokens.weight) == tied
    assert not any(p.is_meta for p in model.parameters())


def test_skeleton_holds_no_weights(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2)
    model = hf_folder.skeleton(folder)
    assert all(p.is_meta for p in model.parameters())
    assert not any(b.is_meta for b in model.buffers())  # rotary tables are computed, real


def test_built_on_the_meta_device_it_reads_no_weights(tmp_path, monkeypatch):
    # pipeline stages plan on shapes: building a quantised artifact's model must not read the float checkpoint
    folder = llama_folder(tmp_path / "m", layers=2)

    def no_reads(*a, **k):
        raise AssertionError("a checkpoint tensor was read")

    monkeypatch.setattr(hf_folder.Shards, "get", no_reads)
    with torch.device("meta"):
        model = build_builtin(hf_folder.source_of(folder))
    assert all(p.is_meta for p in model.parameters())
    assert model.lm.lm_head.weight is model.lm.model.embed_tokens.weight  # tied, as the filled model is


def test_resolve_a_folder_path(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2)
    spec = resolve(str(folder))
    assert spec.metric == "perplexity" and spec.source == "hf:" + str(folder.resolve())
    assert spec.calib_batches and int(spec.targets.max()) < 256  # no tokenizer: bytes
    ev = {tuple(r.tolist()) for b in spec.eval_batches for r in b}
    assert not ev & {tuple(r.tolist()) for b in spec.calib_batches for r in b}


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(BitladderError, match="does not exist"):
        hf_folder.folder_of(str(tmp_path / "nope"))
    with pytest.raises(BitladderError, match="has no config.json"):
        hf_folder.folder_of(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BitladderError, match="unsupported architecture 'bert'; accepted model_type: llama"):
        hf_folder.skeleton(tmp_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(BitladderError, match="not valid JSON"):
        hf_folder.read_config(tmp_path)


def test_small_vocabulary_without_tokenizer_refused(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2, vocab=100)
    with pytest.raises(BitladderError, match="vocabulary \\(100\\) is smaller"):
        hf_folder.calibration(folder, 4)


@pytest.mark.parametrize("kind", ["gpt2", "qwen2"])
def test_other_causal_lm_folders_load_whole_and_go_down_the_ladder(tmp_path, kind):
    import transformers

    import bitladder
    from bitladder.pipeline.measure.evaluate import fidelity, outputs
    from bitladder.zoo.registry import resolve

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        lm = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        lm = transformers.Qwen2ForCausalLM(cfg)
    lm.save_pretrained(str(tmp_path / kind))
    spec = resolve(str(tmp_path / kind))
    assert spec.metric == "perplexity" and spec.source == f"hf:{(tmp_path / kind).resolve()}"
    x = spec.eval_batches[0][:2]
    with torch.no_grad():
        assert torch.allclose(spec.model(x), lm.eval()(input_ids=x).logits, atol=1e-5)
    q = bitladder.quantize(spec.fresh_model(), bitladder.Int(bits=8))
    row = fidelity(spec, outputs(q, spec.eval_batches), outputs(spec.model, spec.eval_batches))
    assert row["fidelity"] > 0.9 and abs(row["perplexity"] / row["fp32_perplexity"] - 1) < 0.02
    bitladder.save(q, tmp_path / "q.safetensors", source=spec.source)
    assert torch.equal(bitladder.load(tmp_path / "q.safetensors")(x), q(x))


def test_an_unknown_architecture_names_what_is_accepted(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "resnet"}')
    from bitladder.zoo.registry import resolve

    with pytest.raises(BitladderError, match="unsupported architecture 'resnet'.*transformers' causal LMs"):
        resolve(str(tmp_path / "m"))


@pytest.mark.parametrize("tied", [True, False])
def test_load_of_a_folder_artifact_reads_no_float_checkpoint(tmp_path, monkeypatch, tied):
    # bitladder.load builds the architecture without weights and takes every tensor from the artifact
    import bitladder
    from bitladder import Int

    folder = llama_folder(tmp_path / "m", layers=2, tied=tied)
    model = build_builtin(hf_folder.source_of(folder))
    x = torch.randint(0, 300, (2, 16))
    for name, q in (("fp32", model), ("int4", bitladder.quantize(model, Int(4, group=32), exclude=["*embed_tokens"]))):
        path = bitladder.save(q, tmp_path / f"{name}.safetensors", source=hf_folder.source_of(folder))
        with monkeypatch.context() as m:
            m.setattr(hf_folder.Shards, "get", lambda *a, **k: pytest.fail("the float checkpoint was read"))
            back = bitladder.load(path)
        assert not any(t.is_meta for t in [*back.parameters(), *back.buffers()])
        with torch.no_grad():
            assert torch.equal(back(x), q(x)), name
