"""``bitladder stream``: a Hugging Face folder quantised block by block from the command line, then run."""

import json

import pytest

from bitladder.cli.stream import rung_of
from bitladder.errors import BitladderError
from bitladder.io.hf_shards import Shards
from tests.cli.test_cli import cli, one_line_error
from tests.zoo.llama_folders import llama_folder


def test_options_name_a_rung():
    assert rung_of("gptq", 4, 64) == "int4-g64-gptq"
    assert rung_of("hqq", 3, 0) == "int3-asym-hqq"
    with pytest.raises(BitladderError, match="unknown method 'foo'; accepted: rtn, .*gptq"):
        rung_of("foo", 4, 64)


@pytest.mark.slow  # two fresh processes with transformers, and run evaluates on the corpus: ~100 s here
def test_stream_then_run_the_artifact(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2)
    out = tmp_path / "q.safetensors"
    res = cli("stream", "--model", str(folder), "--method", "gptq", "--bits", "4", "--group", "32", "--calib", "16",
              "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "block 2/2" in res.stdout and "int4-g32-gptq" in res.stdout and "peak RSS" in res.stdout
    assert not (tmp_path / "q.safetensors.work").exists()
    res = cli("run", str(out))
    assert res.returncode == 0, res.stderr
    assert "perplexity" in res.stdout and "hf:" in res.stdout


def test_bad_folders_are_one_line(tmp_path):
    one_line_error(cli("stream", "--model", str(tmp_path), "--out", str(tmp_path / "x")), "has no config.json")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    one_line_error(cli("stream", "--model", str(tmp_path), "--out", str(tmp_path / "x")),
                   "unsupported architecture 'gpt2'; accepted model_type: llama")
    folder = llama_folder(tmp_path / "m", layers=2)
    gone = Shards(folder).files()[1]
    (folder / gone).unlink()
    one_line_error(cli("stream", "--model", str(folder), "--method", "rtn", "--out", str(tmp_path / "x")),
                   f"shard(s) missing: {gone}")
    assert not (tmp_path / "x").exists()
