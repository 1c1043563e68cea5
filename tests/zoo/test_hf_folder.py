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
