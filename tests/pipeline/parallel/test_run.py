"""``bitladder run ARTIFACT --pipeline N``: one clear line without torchrun, the same figures as ``run`` in one
stage, and (slow) the same figures from two torchrun processes."""

import os
import re
import subprocess
import sys

import pytest

import bitladder
from bitladder import Int
from bitladder.cli.app import main
from bitladder.zoo import causal_lm


@pytest.fixture(scope="module")
def int4(tmp_path_factory):
    q = bitladder.quantize(causal_lm.pretrained(), Int(bits=4, group=32))
    return bitladder.save(q, tmp_path_factory.mktemp("run") / "int4.safetensors", source="tinylm")


def _figures(text: str) -> tuple[float, float]:
    text = " ".join(text.split())  # the console wraps long lines
    m = re.search(r"(?:perplexity|next-token agreement with fp32) (\d\.\d{4}).*perplexity (\d+\.\d{3})", text)
    assert m, text
    return float(m[1]), float(m[2])


def test_several_stages_without_torchrun_is_one_line(int4, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        main(["run", str(int4), "--pipeline", "2"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --pipeline 2 runs one stage per process: launch it with torchrun --nproc-per-node 2 "
                   "--no-python bitladder run ARTIFACT --pipeline 2"]


def test_one_stage_gives_runs_figures(int4, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    main(["run", str(int4)])
    plain = capsys.readouterr().out
    main(["run", str(int4), "--pipeline", "1"])
    staged = capsys.readouterr().out
    assert "in 1 pipeline stage (stage 1: units 0-3, 0.27 MiB, peak RSS" in " ".join(staged.split())
    agreement, ppl = _figures(staged)
    assert f"perplexity {agreement:.4f}" in plain and 0.9 < agreement < 1  # run names the metric, not the value
    assert 1 < ppl < 20


@pytest.mark.slow
def test_two_torchrun_processes_give_the_same_figures(int4, monkeypatch, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "bitladder.cli.app", "run", str(int4), "--pipeline", "2", "--microbatches", "4"],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [" ".join(out.stdout.split())]
    assert out.stdout.count("in 2 pipeline stages") == 1 and "stage 1: units 0-1" in lines[0] and "stage 2: units 2-3" in lines[0], out.stdout
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    main(["run", str(int4), "--pipeline", "1"])
    one = _figures(capsys.readouterr().out)
    two = _figures(lines[0])
    assert abs(one[0] - two[0]) <= 2e-4 and abs(one[1] - two[1]) <= 1e-3  # micro-batches: float rounding only
