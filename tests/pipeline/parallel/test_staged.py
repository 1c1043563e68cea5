"""``compress --pipeline N`` / recipe ``distributed: {mode: pipeline}``: the result evaluated in stages beside the
one-process evaluation; clear errors before any work for what cannot be staged; (slow) two torchrun processes."""

import json
import os
import subprocess
import sys

import pytest

from bitladder.cli.app import main
from bitladder.pipeline.recipe.compress import run_recipe
from bitladder.pipeline.recipe.parse import parse_recipe
from bitladder.zoo.registry import resolve

RECIPE = ("model: tinylm\nname: tl\ndistributed: {{mode: pipeline, stages: {n}}}\n"
          "steps:\n  - quantize: {{rung: int4-g32}}\n  - evaluate: {{repeats: 1, robustness: false}}\n")


def _one_line_error(args, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_one_stage_equals_the_one_process_evaluation(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    res = run_recipe(parse_recipe(RECIPE.format(n=1)), resolve("tinylm"), tmp_path / "out")
    row = res["rungs"][0]
    p = row["pipeline"]
    assert p["stages"] == 1 and p["stage_rows"][0]["units"] == [0, 4]
    assert p["max_abs_diff"] == 0.0  # the same tensors, loaded by the stage loader
    assert p["fidelity"] == row["fidelity"] and p["perplexity"] == row["perplexity"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rungs"][0]["pipeline"]["stages"] == 1


def test_a_one_stage_ladder_scores_each_rung_in_stages(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    main(["ladder", "--model", "tinylm", "--rungs", "int8,int4-g32", "--repeats", "1", "--out", str(tmp_path),
          "--pipeline", "1"])
    text = " ".join(capsys.readouterr().out.split())
    assert "int8: pipeline: 1 stage(s)" in text and "int4-g32: pipeline: 1 stage(s)" in text
    for row in json.loads((tmp_path / "results.json").read_text())["rungs"]:
        assert row["pipeline"]["max_abs_diff"] == 0.0 and row["pipeline"]["fidelity"] == row["fidelity"]


def test_what_cannot_be_staged_fails_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.format(n=1))
    line = _one_line_error(["compress", str(r), "--out", str(tmp_path / "a"), "--pipeline", "2"], capsys)
    assert line.startswith("error: --pipeline 2 runs one stage per process: launch it with torchrun")
    r.write_text("model: digits\nsteps:\n  - quantize: {rung: int8}\n")
    line = _one_line_error(["compress", str(r), "--out", str(tmp_path / "b"), "--pipeline", "1"], capsys)
    assert "cannot be split into pipeline stages" in line
    r.write_text("model: tinylm\nsteps:\n  - prune: {method: channels, sparsity: 0.2}\n")
    line = _one_line_error(["compress", str(r), "--out", str(tmp_path / "c"), "--pipeline", "1"], capsys)
    assert "prune reshapes the model" in line
    assert not [f for d in "abc" if (tmp_path / d).is_dir() for f in (tmp_path / d).iterdir()]  # nothing written


@pytest.mark.slow
def test_two_torchrun_processes_stage_the_recipes_result(tmp_path):
    r = tmp_path / "r.yaml"
    r.write_text(RECIPE.format(n=2).replace("stages: 2", "stages: 2, microbatches: 1"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "bitladder.cli.app", "compress", str(r), "--out", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("pipeline: 2 stage(s)") == 1  # rank 0 reports, once
    row = json.loads((tmp_path / "out" / "results.json").read_text())["rungs"][0]
    p = row["pipeline"]
    assert [s["units"] for s in p["stage_rows"]] == [[0, 2], [2, 4]]
    assert p["max_abs_diff"] == 0.0  # one micro-batch: the same GEMM shapes as one process, the same bits
    assert p["fidelity"] == row["fidelity"] and p["perplexity"] == row["perplexity"]


@pytest.mark.slow
def test_two_torchrun_processes_stage_every_rung(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "bitladder.cli.app", "ladder", "--model", "tinylm", "--rungs", "int8,int4-g32",
                          "--repeats", "1", "--out", str(tmp_path), "--pipeline", "2"],
                         env=env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rungs"]
    assert [r["rung"] for r in rows] == ["int8", "int4-g32"]
    for r in rows:  # four micro-batches: other GEMM shapes, so float rounding only
        p = r["pipeline"]
        assert p["stages"] == 2 and p["max_abs_diff"] <= 1e-5 * p["max_abs_output"]
        assert abs(p["fidelity"] - r["fidelity"]) <= 2e-4 and abs(p["perplexity"] - r["perplexity"]) <= 1e-3
