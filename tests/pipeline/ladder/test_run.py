"""The ladder on the real built-in digits model, with the targets of the precision-ladder issue."""

import json

import pytest

from bitladder.pipeline.ladder.run import run_ladder
from bitladder.pipeline.report.html import write_report

KEYS = {"rung", "config", "fidelity", "fidelity_drop_pt", "cos_min", "knn10", "bytes_on_disk", "quantized_bytes",
        "theoretical_bytes", "bits_per_weight", "latency_ratio", "kernels", "warnings"}


@pytest.fixture(scope="module")
def digits_results(digits_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder")
    return run_ladder(digits_spec, digits_spec.default_rungs, out, repeats=3), out


def test_schema(digits_results):
    res, out = digits_results
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema"] == "bitladder.ladder/1" and on_disk["metric"] == "accuracy"
    assert {"cpu", "flags", "cores", "threads", "versions"} <= set(on_disk["machine"])
    assert on_disk["allocator"] == {"allocator": "default"}  # a library call pins nothing (the command does)
    assert [r["rung"] for r in on_disk["rungs"]] == [r["rung"] for r in res["rungs"]]
    for r in on_disk["rungs"]:
        assert KEYS <= set(r)
        assert all(layer["latency_ratio"] > 0 for layer in r["layers"].values())
        slow = [n for n, layer in r["layers"].items() if layer["latency_ratio"] < 0.95]
        assert bool(slow) == any("layers slower than fp32" in w for w in r["warnings"])
        assert r["reload_identical"]
        assert (out / r["artifact"]).stat().st_size == r["bytes_on_disk"]


def test_fidelity_targets(digits_results):
    res, _ = digits_results
    assert res["fp32_fidelity"] >= 0.97
    rows = {r["rung"]: r for r in res["rungs"]}
    for rung in ("fp64", "fp32", "fp16", "bf16"):
        assert abs(rows[rung]["fidelity_drop_pt"]) <= 0.2, rung
    assert rows["int8"]["fidelity_drop_pt"] <= 0.5
    assert rows["int4-g32"]["fidelity_drop_pt"] <= 2.0


def test_sizes_are_real(digits_results):
    res, _ = digits_results
    rows = {r["rung"]: r for r in res["rungs"]}
    assert rows["int8"]["layers"]["features.0"]["sqnr_db"] > 35  # weights keep ~6 dB per bit
    assert rows["binary"]["layers"]["features.0"]["sqnr_db"] < 10
    for r in res["rungs"]:
        assert abs(r["quantized_bytes"] - r["theoretical_bytes"]) <= 0.01 * r["theoretical_bytes"], r["rung"]
    assert rows["fp32"]["quantized_bytes"] / rows["binary"]["quantized_bytes"] >= 25
    assert rows["int4-g32"]["bits_per_weight"] == pytest.approx(4.5, abs=0.05)
    assert rows["fp64"]["bits_per_weight"] == 64
    sizes = [rows[r]["bytes_on_disk"] for r in ("fp64", "fp32", "fp16", "int8", "int4-g32", "ternary", "binary")]
    assert sizes == sorted(sizes, reverse=True)


def test_report_is_self_contained(digits_results, tmp_path):
    res, _ = digits_results
    html = write_report(res, tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "Pareto front: fidelity vs size" in html and "Pareto front: fidelity vs latency" in html
    assert "http://" not in html and "https://" not in html
    assert "int4-g32" in html
    assert f"Machine: {res['machine']['cpu']}" in html
    assert "Per-layer weight SQNR" in html and "classifier.3" in html


def test_a_rotated_rung_saves_reloads_and_reports_its_layers(digits_spec, tmp_path):
    res = run_ladder(digits_spec, ["int4-g32-r32"], tmp_path, repeats=2)
    row = res["rungs"][0]
    assert row["reload_identical"] and row["fidelity_drop_pt"] <= 2.0
    rotated = [n for n in row["layers"] if n.endswith(".layer")]  # the quantised Linear inside each Rotated
    assert rotated and all(row["layers"][n]["sqnr_db"] > 10 for n in rotated)  # measured against W H, not W
