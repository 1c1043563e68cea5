"""Single tensors out of a sharded Hugging Face checkpoint, and clear errors for broken folders."""

import json

import pytest
from safetensors.torch import load_file

from bitladder.errors import BitladderError
from bitladder.io.hf_shards import INDEX, Shards
from tests.zoo.llama_folders import llama_folder


def test_reads_each_tensor_from_its_shard(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2)
    shards = Shards(folder)
    assert len(shards.files()) >= 3
    for f in shards.files():
        for k, v in load_file(str(folder / f)).items():
            assert shards.where[k] == f and shards.get(k).equal(v)


def test_missing_shard_and_tensor_are_one_line_errors(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2)
    shards = Shards(folder)
    with pytest.raises(BitladderError, match="no tensor 'nope'"):
        shards.get("nope")
    before = shards.fingerprint()
    gone = shards.files()[1]
    (folder / gone).unlink()
    with pytest.raises(BitladderError, match=f"shard\\(s\\) missing: {gone}"):
        Shards(folder)
    (folder / INDEX).write_text(json.dumps({"weight_map": {"a": "model.safetensors"}}))
    (folder / "model.safetensors").write_bytes(b"")
    assert Shards(folder).fingerprint() != before


def test_folder_without_safetensors_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(BitladderError, match="no safetensors weights.*pickle"):
        Shards(tmp_path)
