"""Recipes run end to end on the real digits model: sizes, structure, reload, report sections."""

import json

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder import load
from bitladder.pipeline.recipe.compress import run_recipe
from bitladder.pipeline.recipe.parse import parse_recipe
from bitladder.pipeline.report.html import render
from bitladder.zoo.spec import ModelSpec


def recipe(*steps: str):
    return parse_recipe("model: digits\nname: t\nsteps:\n" + "".join(f"  - {s}\n" for s in steps))


@pytest.fixture(scope="module")
def sparse_run(digits_spec, tmp_path_factory):
    out = tmp_path_factory.mktemp("sparse")
    r = recipe("prune: {sparsity: 0.7}", "finetune: {epochs: 12, lr: 2.0e-3}", "quantize: {rung: int8}",
               "evaluate: {repeats: 2, noise: [0.25], sensitivity: [int8, int2-g32-asym]}")
    return run_recipe(r, digits_spec, out), out


def test_sparse_int8_recipe_shrinks_and_keeps_accuracy(sparse_run):
    res, out = sparse_run
    row = res["rungs"][0]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema"] == "bitladder.ladder/1" and on_disk["machine"]["cpu"]
    assert [s["step"] for s in res["steps"]] == ["prune", "finetune", "quantize"]
    assert res["steps"][1]["fidelity"] > res["steps"][0]["fidelity"] - 0.005  # fine-tuning recovers
    assert res["steps"][0]["nonzero"] < 0.35 * res["steps"][0]["params"]  # 70 % of the weights are zeros
    assert row["fidelity_drop_pt"] <= 1.0
    assert row["bytes_on_disk"] * 4 < row["fp32_bytes"]  # int8 + 70 % zeros in a bitmask
    assert row["reload_identical"] and set(row["kernels"]) == set(row["formats"])
    assert len(res["summary"]) == 5 and all(s["bytes_after"] < s["bytes_before"] / 3 for s in res["summary"])
    assert {(r["kind"], r["level"]) for r in res["robustness"]} == {("noise", 0.25), ("range", 0.25)}
    assert set(res["sensitivity"]["features.0"]) == {"int8", "int2-g32-asym"}


def test_report_has_every_section(sparse_run):
    page = render(sparse_run[0])
    for needle in ("Pareto front: fidelity vs size", "Pareto front: fidelity vs latency", "per-layer sensitivity",
                   "bytes per layer, before and after",
                   "Model before / after", "Robustness", "Steps", "Warnings", "dataset.figures"):
        assert needle in page
    assert page.count("data:image/png;base64,") == 4 and "https://" not in page


def test_channel_pruned_recipe_is_smaller_in_params_and_macs_and_reloads(digits_spec, tmp_path):
    r = recipe("prune: {method: channels, sparsity: 0.5}", "finetune: {epochs: 6, lr: 2.0e-3}",
               "quantize: {rung: int4-g32}", "evaluate: {repeats: 2, robustness: false}")
    res = run_recipe(r, digits_spec, tmp_path)
    row = res["rungs"][0]
    assert row["params"] < 0.5 * row["fp32_params"] and row["macs"] < 0.5 * row["fp32_macs"]
    assert any("not pruned" in w and "classifier.3" in w for w in row["warnings"])
    back = load(tmp_path / "t.safetensors")  # factory + recorded structure, no model passed
    x = digits_spec.eval_batches[0]
    acc = float((back(x).argmax(1) == digits_spec.targets).float().mean())
    assert acc == pytest.approx(row["fidelity"], abs=1e-6) and row["fidelity_drop_pt"] <= 3.0


def test_training_steps_need_data_and_labels(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    x = torch.randn(8, 4)
    spec = ModelSpec(name="tiny", model=model, metric="cosine", eval_batches=[x], latency_batch=x)
    with pytest.raises(BitladderError, match="no training data"):
        run_recipe(recipe("distill: {epochs: 1}"), spec, tmp_path)
    spec.train_batches = [x]
    with pytest.raises(BitladderError, match="finetune needs labels"):
        run_recipe(recipe("finetune: {epochs: 1}"), spec, tmp_path)


@pytest.mark.slow
def test_minilm_example_recipe_end_to_end(minilm_spec, tmp_path):
    from pathlib import Path

    from bitladder.pipeline.recipe.parse import load_recipe

    r = load_recipe(Path(__file__).parents[3] / "examples" / "minilm.yaml")
    res = run_recipe(r, minilm_spec, tmp_path)
    row = res["rungs"][0]
    assert row["fidelity"] >= 0.975 and row["knn10"] >= 0.8  # measured 0.982 after one epoch of distillation
    assert row["bytes_on_disk"] * 3 < row["fp32_bytes"] and row["reload_identical"]
    assert "per-layer sensitivity" in render(res)


def test_separable_substitution_recipe(digits_spec, tmp_path):
    r = recipe("lowrank: {conv: separable, include: ['features.2', 'features.5']}", "distill: {epochs: 3, lr: 2.0e-3}",
               "quantize: {rung: int8}", "evaluate: {repeats: 2, robustness: false}")
    res = run_recipe(r, digits_spec, tmp_path)
    row = res["rungs"][0]
    assert row["macs"] < 0.3 * row["fp32_macs"] and row["reload_identical"]
    assert load(tmp_path / "t.safetensors").features[2].kind == "separable"
