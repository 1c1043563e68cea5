"""Streamed PTQ of a sharded Hugging Face folder: the same bytes as quantising the whole model in memory,
a loadable artifact, resumption after a kill, and one-line refusals."""

import pytest
import torch

import bitladder
from bitladder.errors import BitladderError
from bitladder.io.artifact import save
from bitladder.io.hf_shards import Shards
from bitladder.pipeline.stream.run import stream_quantize
from bitladder.zoo import hf_folder
from tests.zoo.llama_folders import llama_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = llama_folder(tmp_path_factory.mktemp("llama") / "m", layers=4, hidden=64, tied=True)
    assert len(Shards(path).files()) >= 3
    return path


@pytest.fixture(scope="module")
def calib(folder):
    return hf_folder.calibration(folder, 16, 8)


def in_memory(folder, config, calib, out):
    model = hf_folder.build(str(folder))
    save(bitladder.quantize(model, config, calib=calib), out, source=hf_folder.source_of(folder),
         config=config.to_dict())
    return out


CONFIGS = {"gptq-w4-g32": bitladder.Int(4, group=32, method=bitladder.GPTQ()), "rtn-w4-g32": bitladder.Int(4, group=32),
           "awq-w4-g32": bitladder.Int(4, group=32, method=bitladder.AWQ(grid=5)),
           "hqq-w3-g32": bitladder.Int(3, group=32, symmetric=False, method=bitladder.HQQ(iters=5))}


@pytest.mark.parametrize("name", CONFIGS)
def test_streamed_equals_in_memory_byte_for_byte(folder, calib, tmp_path, name):
    config = CONFIGS[name]
    ref = in_memory(folder, config, calib, tmp_path / "mem.safetensors")
    seen = []
    out = stream_quantize(folder, config, calib, tmp_path / "stream.safetensors", on_block=lambda i, n, s: seen.append((i, n)))
    assert seen == [(i, 4) for i in range(4)]
    assert out.read_bytes() == ref.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem.safetensors", "stream.safetensors"]  # work folder gone


def test_untied_head_equals_in_memory(tmp_path):
    folder = llama_folder(tmp_path / "m", layers=2, tied=False)
    calib = hf_folder.calibration(folder, 16, 8)
    config = CONFIGS["gptq-w4-g32"]
    ref = in_memory(folder, config, calib, tmp_path / "mem.safetensors")
    assert stream_quantize(folder, config, calib, tmp_path / "s.safetensors").read_bytes() == ref.read_bytes()


def test_artifact_loads_from_its_folder_and_runs(folder, calib, tmp_path):
    config = CONFIGS["gptq-w4-g32"]
    out = stream_quantize(folder, config, calib, tmp_path / "s.safetensors")
    loaded = bitladder.load(out)
    reference = bitladder.quantize(hf_folder.build(str(folder)), config, calib=calib)
    x = calib[0][:2]
    with torch.no_grad():
        assert torch.equal(loaded(x), reference(x))
        fp32 = hf_folder.build(str(folder))(x)
    assert loaded.lm.model.layers[3].mlp.down_proj.qweight.qtype.name == "int4"
    assert (loaded(x) - fp32).abs().max() < 0.5 * fp32.abs().max()  # quantised, not garbage


class Killed(Exception):
    pass


def test_killed_run_resumes_from_its_last_block(folder, calib, tmp_path):
    config = CONFIGS["gptq-w4-g32"]
    out = tmp_path / "s.safetensors"

    def die_after_1(i, n, s):
        if i == 1:
            raise Killed

    with pytest.raises(Killed):
        stream_quantize(folder, config, calib, out, on_block=die_after_1)
    assert not out.exists() and (tmp_path / "s.safetensors.work" / "state.json").is_file()
    with pytest.raises(BitladderError, match="unfinished run of another model, config or calibration"):
        stream_quantize(folder, CONFIGS["rtn-w4-g32"], calib, out)
    with pytest.raises(BitladderError, match="unfinished run"):
        stream_quantize(folder, config, calib[:1] + [calib[1] + 1], out)
    seen = []
    stream_quantize(folder, config, calib, out, on_block=lambda i, n, s: seen.append(i))
    assert seen == [2, 3]
    assert out.read_bytes() == in_memory(folder, config, calib, tmp_path / "mem.safetensors").read_bytes()


def test_refusals_are_one_line(folder, calib, tmp_path):
    with pytest.raises(BitladderError, match="per-layer methods only.*activation"):
        stream_quantize(folder, bitladder.Int(8, act=bitladder.Act()), calib, tmp_path / "x")
    with pytest.raises(BitladderError, match="GPTQ needs calibration data"):
        stream_quantize(folder, CONFIGS["gptq-w4-g32"], None, tmp_path / "x")
    with pytest.raises(BitladderError, match="output folder .* does not exist"):
        stream_quantize(folder, CONFIGS["rtn-w4-g32"], None, tmp_path / "no" / "x")
    with pytest.raises(BitladderError, match="has no config.json"):
        stream_quantize(tmp_path, CONFIGS["rtn-w4-g32"], None, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


# Private data the run may add to its imports. RLIMIT_DATA counts address space, and the heap's freed middle
# stays counted after malloc_trim, so the streamed run peaks 89-94 MB above its imports here (sampled, 4 runs; 50-94
# MB between blocks, varying with where glibc places each block's temporaries). A 100 MB cap failed once in CI;
# 200 MB leaves twice the peak.
CAP_MB = 200


def _capped(mode, folder, out):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    return subprocess.run([sys.executable, "-m", "tests.pipeline.stream.capped", mode, str(folder), str(out), str(CAP_MB)],
                          cwd=root, capture_output=True, text=True, timeout=600)


def test_streamed_gptq_fits_a_cap_a_third_of_the_model(tmp_path):
    # 72 blocks of hidden 512 (MLP 1024, vocabulary 4096): 0.70 GB fp32 in 18 shards, 3.3x the cap
    import json

    folder = llama_folder(tmp_path / "m", layers=72, hidden=512, tied=False, shard="40MB", vocab=4096, heads=8)
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert size >= 3 * CAP_MB * 2**20 and len(Shards(folder).files()) >= 4
    run = _capped("stream", folder, tmp_path / "s.safetensors")
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["peak_rss_mb"] > 0
    assert bitladder.load(tmp_path / "s.safetensors").lm.model.layers[71].mlp.down_proj.qweight.qtype.name == "int4"
    # the cap is real: the in-memory path, which holds the float model, cannot run under it
    whole = _capped("memory", folder, tmp_path / "m.safetensors")
    assert whole.returncode != 0 and "allocate" in whole.stderr, whole.stderr[-2000:]
