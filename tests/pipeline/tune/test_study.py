"""tune: the search space, two workers on one SQLite study, resume, and budgets nothing meets."""

import html
import json

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder.pipeline.tune import study as T
from bitladder.pipeline.measure.warn import on_fallback
from bitladder.pipeline.report.html import render
from bitladder.pipeline.tune.run import open_study, redact, run_tune

FAST = dict(formats=("int8", "int4-g64", "ternary"), sparsity=(0.0, 0.5), energy=(1.0,), repeats=1)


def test_split_eval_halves_rows_and_targets(digits_spec):
    a, b = T.split_eval(digits_spec)
    xa, xb = a.eval_batches[0], b.eval_batches[0]
    assert len(xa) + len(xb) == len(digits_spec.eval_batches[0]) and len(a.targets) == len(xa)
    assert torch.equal(torch.cat([xa, xb]), digits_spec.eval_batches[0])
    assert torch.equal(torch.cat([a.targets, b.targets]), digits_spec.targets)


def test_build_counts_bits_of_every_stored_tensor(digits_spec):
    names = T.layers_of(digits_spec.model)
    numel = T._weight_numel(digits_spec.model, names)
    fp16 = T.build(digits_spec, {f"fmt:{n}": "fp16" for n in names}, names)
    assert T.compressed_bits(fp16, names, numel)[0] == pytest.approx(16.0)
    params = {**{f"fmt:{n}": "int8" for n in names}, "sparsity": 0.0, "energy": 0.9}
    lowrank = T.build(digits_spec, params, names)
    bits, _ = T.compressed_bits(lowrank, names, numel)
    assert 1.0 < bits < 8.0  # the factorised Linear stores fewer weights than it replaced


def test_two_workers_share_one_sqlite_study_and_resume(tmp_path):
    cfg = T.TuneConfig(max_drop=100.0, trials=4, **FAST)
    res = run_tune("digits", cfg, tmp_path, workers=2)
    done = [t for t in res["trials"] if t["state"] == "COMPLETE"]
    assert len(done) >= 4 and len(res["workers"]) == 2  # trials came from two processes
    firsts = [{v for k, v in t["params"].items() if k.startswith("fmt:")} for t in res["trials"][:3]]
    assert sorted(f.pop() for f in firsts if len(f) == 1) == sorted(FAST["formats"])  # warm start: the ladder
    best = res["rungs"][0]
    assert (tmp_path / best["artifact"]).exists() and (tmp_path / "study.db").exists()
    assert best["bits_per_weight"] == pytest.approx(min(t["bits_per_weight"] for t in done), rel=1e-6)
    assert json.loads((tmp_path / "results.json").read_text())["best"]["number"] == res["best"]["number"]
    page = render(res)
    assert "Pareto front: fidelity vs size" in page and "Trials" in page
    for section in ("per-layer sensitivity", "Model before / after", "Robustness"):
        assert section in page
    # the best trial's warnings come from the engine, not a constant: they follow its measured facts
    assert (best["latency_ratio"] < 0.95) == any("slower than fp32" in w for w in best["warnings"])
    assert any(on_fallback(k) for k in best["kernels"].values()) == any("fallback kernel" in w
                                                                        for w in best["warnings"])
    assert all(html.escape(w) in page for w in best["warnings"])  # as the page escapes them ("a layer's", "fp32's")
    again = run_tune("digits", T.TuneConfig(max_drop=100.0, trials=len(done) + 2, **FAST), tmp_path)
    numbers = [t["number"] for t in again["trials"] if t["state"] == "COMPLETE"]
    assert len(numbers) >= len(done) + 2 and set(t["number"] for t in done) <= set(numbers)


def test_budget_nothing_meets_names_the_best_found(tmp_path):
    cfg = T.TuneConfig(max_drop=0.0, trials=2, formats=("binary",), sparsity=(0.0,), energy=(1.0,), repeats=1)
    with pytest.raises(BitladderError, match=r"no configuration met max drop 0 pt in 2 trials; best found: trial #"):
        run_tune("digits", cfg, tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["trials"] and on_disk["machine"]["cpu"]


def test_bad_configs_and_storage(tmp_path):
    with pytest.raises(BitladderError, match="unknown objective"):
        T.TuneConfig(objective="fastest")
    with pytest.raises(BitladderError, match="unknown rung"):
        T.TuneConfig(formats=("int9",))
    with pytest.raises(BitladderError, match="cannot open study storage"):
        open_study("nosuchdb://x", "s", T.TuneConfig())
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_study(url, "s", T.TuneConfig(max_drop=1.0))
    with pytest.raises(BitladderError, match="use another --study name"):
        open_study(url, "s", T.TuneConfig(max_drop=2.0))
    assert redact("postgresql://bob:secret@host/db") == "postgresql://bob:***@host/db"
