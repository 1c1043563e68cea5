"""The bench of any model: one real run of fp32 and a rung of a Hugging Face folder, each in its own process, gives
a row per batch size with the model's own metric; bad requests fail before anything is timed."""

import json

import pytest

from bitladder.cli.app import main
from bitladder.errors import BitladderError
from bitladder.pipeline.bench import model as bench_model
from tests.zoo.llama_folders import llama_folder


def test_a_folder_causal_lm_gets_agreement_perplexity_and_a_ratio_per_batch(tmp_path):
    folder = llama_folder(tmp_path / "lm", layers=1)
    rows = bench_model.model_rows(str(folder), ["int8"], repeats=2)
    assert [(r["batch"], r["variant"]) for r in rows] == [(b, v) for b in (4, 1) for v in ("fp32", "bitladder int8")]
    fp32 = [r for r in rows if r["variant"] == "fp32"]
    q = [r for r in rows if r["variant"] != "fp32"]
    assert all(r["agreement"] == 1.0 and r["ratio_vs_fp32"] == 1.0 and r["metric"] == "perplexity" for r in fp32)
    for r in q:
        assert r["agreement"] > 0.9 and abs(r["perplexity"] / r["fp32_perplexity"] - 1) < 0.01
        assert r["latency_ms"] > 0 and r["peak_rss_mb"] > 0
    # one sample is also timed in bursts: calls back to back beside the first one after the pause
    assert all(r["warm_latency_ms"] > 0 and r["warm_ratio_vs_fp32"] > 0 for r in rows if r["batch"] == 1)
    assert all("warm_latency_ms" not in r for r in rows if r["batch"] != 1)


def test_first_sample_of_each_batch_form():
    import torch

    assert bench_model.first_sample({"a": torch.zeros(3, 5)})["a"].shape == (1, 5)
    assert bench_model.first_sample(torch.zeros(4, 2)).shape == (1, 2)
    assert [t.shape for t in bench_model.first_sample((torch.zeros(4, 2), torch.zeros(4)))] == [(1, 2), (1,)]
    assert bench_model.rows_of({"a": torch.zeros(3, 5)}) == 3 and bench_model.rows_of(torch.zeros(4, 2)) == 4


def test_bad_requests_fail_before_timing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_model, "isolated_latency", lambda *a, **k: pytest.fail("timed a bad request"))
    with pytest.raises(BitladderError, match="needs calibration data and model"):
        bench_model.model_rows("tests.zoo.user_models:regressor", ["int4-g32-gptq"])
    for args, says in ((["--rungs", "int8"], "--rungs, --data and --task go with --model"),
                       (["--model", "digits", "--rungs", "int9"], "int9")):
        with pytest.raises(SystemExit) as e:  # one line on stderr, exit 2
            main(["bench", *args])
        assert e.value.code == 2
        assert says in capsys.readouterr().err


def test_the_cli_writes_the_rows_and_the_command(tmp_path, monkeypatch):
    """The wiring only (in process, rows and limits stubbed): the rows are measured above."""
    from bitladder.pipeline.bench import limits
    from bitladder.pipeline.measure import allocator
    from bitladder.pipeline.measure.machine import LIBRARY_CAPS

    got = {}
    monkeypatch.setattr(bench_model, "model_rows", lambda m, r, rep, d: got.update(m=m, r=r, rep=rep) or [
        {"case": "digits", "batch": 1, "variant": "fp32", "latency_ms": 1.0, "ratio_vs_fp32": 1.0}])
    monkeypatch.setattr(limits, "measure", lambda: {"read_gbps": 16.0, "fp32_gflops": 80.0, "int8_gops": 160.0})
    monkeypatch.setattr(allocator, "steady_allocator", lambda: {"allocator": "default"})  # this process stays as is
    for name in ("BITLADDER_CPU", *LIBRARY_CAPS):  # a shell's caps would head the command line
        monkeypatch.delenv(name, raising=False)
    main(["bench", "--model", "digits", "--rungs", "int8,int4-g32", "--repeats", "3", "--json", str(tmp_path / "b.json")])
    data = json.loads((tmp_path / "b.json").read_text())
    assert got == {"m": "digits", "r": ["int8", "int4-g32"], "rep": 3}
    assert data["command"] == f"bitladder bench --model digits --rungs int8,int4-g32 --repeats 3 --json {tmp_path / 'b.json'}"
