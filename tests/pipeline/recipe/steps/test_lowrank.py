"""Recipe steps on the pipeline state: the lowrank step's data-aware factors."""

import dataclasses

import pytest

from bitladder.errors import BitladderError
from bitladder.methods.lowrank.svd import FactorizedLinear
from bitladder.pipeline.recipe.steps import State
from bitladder.pipeline.measure.evaluate import fidelity, outputs
from bitladder.pipeline.recipe.steps import LowRankStep


def _run(spec, **body):
    st = State(spec, spec.model)
    LowRankStep(param_ratio=0.3, include=["classifier.1"], **body).run(st)
    assert isinstance(st.model.classifier[1], FactorizedLinear)
    return st


def test_lowrank_step_whitens_by_calibration_data_when_the_model_has_it(digits_spec):
    aware, plain = _run(digits_spec), _run(digits_spec, data_aware=False)
    assert aware.configs[-1]["data_aware"] is True and plain.configs[-1]["data_aware"] is False
    ref = outputs(digits_spec.model, digits_spec.eval_batches)
    err = {k: float((outputs(st.model, digits_spec.eval_batches) - ref).norm() / ref.norm())
           for k, st in (("aware", aware), ("plain", plain))}
    assert err["aware"] < 0.8 * err["plain"]  # the same rank fits the layer's real inputs better
    assert fidelity(digits_spec, outputs(aware.model, digits_spec.eval_batches), ref)["fidelity"] > 0.95


def test_lowrank_step_data_aware_needs_data_and_linear_layers(digits_spec):
    bare = dataclasses.replace(digits_spec, calib_batches=[])
    assert _run(bare).configs[-1]["data_aware"] is False  # unset: the weights alone when there is no data
    with pytest.raises(BitladderError, match="no calibration data"):
        _run(bare, data_aware=True)
    with pytest.raises(BitladderError, match="Linear factors only"):
        LowRankStep(conv="separable", data_aware=True).check()
