"""The factory forms: tuples, the dict form, calibration batches, and one-line errors for the rest."""

import pytest
import torch
from torch import nn

from bitladder import BitladderError
from bitladder.pipeline.ladder.run import run_ladder
from bitladder.zoo.factory import spec_from
from bitladder.zoo.registry import resolve


def test_dict_form_carries_calibration_batches_and_enables_gptq(tmp_path):
    spec = resolve("tests.zoo.user_models:calibrated_regressor")
    assert spec.metric == "cosine" and len(spec.calib_batches) == 2
    res = run_ladder(spec, ["int4-g32", "int4-g32-gptq"], tmp_path, repeats=1)
    rtn, gptq = res["rungs"]
    assert gptq["fidelity"] > 0.95 and gptq["fidelity"] >= rtn["fidelity"] - 0.01


def test_tuple_with_targets_and_calib():
    m = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    spec = spec_from("f", (m, x, y, torch.randn(5, 4)))
    assert spec.metric == "accuracy" and len(spec.calib_batches) == 1 and spec.calib_batches[0].shape == (5, 4)


def test_calibration_rows_that_are_evaluation_rows_are_refused():
    with pytest.raises(BitladderError, match="8 calibration rows are also evaluation inputs"):
        resolve("tests.zoo.user_models:calib_is_eval")


@pytest.mark.parametrize("result,msg", [
    ({"model": nn.Linear(4, 2), "inputs": torch.randn(3, 4), "calibration": 1}, r"unknown keys \['calibration'\]"),
    ((nn.Linear(4, 2), [1, 2]), "inputs must be a tensor or a dict of tensors"),
    (("model", torch.randn(3, 4)), "model must be a torch.nn.Module, got str"),
    ((nn.Linear(4, 2), torch.randn(3, 4), torch.zeros(5)), r"one label per input row \(3\)"),
    ((nn.Linear(4, 2), torch.randn(3, 4), None, []), "calib must be a tensor"),
    ((nn.Linear(4, 2), torch.randn(3, 4), None, ["x"]), "calib must be a tensor"),
    ((nn.Linear(4, 2),), "returned tuple; accepted"),
])
def test_bad_factory_results_name_what_is_wrong(result, msg):
    with pytest.raises(BitladderError, match=msg):
        spec_from("f", result)
