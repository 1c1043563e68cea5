"""A recipe step is one class under ``@step``: the parser, the order check and the pipeline find it."""

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.parse import parse_recipe
from bitladder.pipeline.recipe.steps import STEPS, Selected, State, step


@pytest.fixture
def halve_step():
    @step("halve", stage=1)
    class Halve(Selected):
        """Scale every selected Linear's weight by ``factor`` (a toy transform)."""
        factor: float = 0.5

        def check(self) -> None:
            if not 0 < self.factor <= 1:
                raise BitladderError(f"factor must be in (0, 1], got {self.factor}")

        def run(self, st: State) -> None:
            with torch.no_grad():
                for m in st.model.modules():
                    if isinstance(m, torch.nn.Linear):
                        m.weight.mul_(self.factor)
            st.configs.append({"type": "Halve", "factor": self.factor})

    yield Halve
    STEPS.pop("halve")


def test_a_registered_step_is_parsed_ordered_and_run(halve_step, digits_spec):
    r = parse_recipe("model: digits\nsteps:\n  - halve: {factor: 0.25}\n  - quantize: {rung: int8}\n")
    assert [s.kind for s in r.steps] == ["halve", "quantize"]
    st = State(digits_spec, digits_spec.fresh_model())
    st.model.load_state_dict(digits_spec.model.state_dict())
    r.steps[0].body.run(st)
    assert torch.allclose(st.model.classifier[1].weight, digits_spec.model.classifier[1].weight * 0.25)
    assert st.configs == [{"type": "Halve", "factor": 0.25}]


def test_a_registered_step_keeps_its_place_and_its_checks(halve_step):
    with pytest.raises(BitladderError, match="halve cannot follow quantize"):
        parse_recipe("model: digits\nsteps:\n  - quantize: {rung: int8}\n  - halve: {}\n")
    with pytest.raises(BitladderError, match="factor must be in"):
        parse_recipe("model: digits\nsteps:\n  - halve: {factor: 2}\n")
    with pytest.raises(BitladderError, match="unknown field"):
        parse_recipe("model: digits\nsteps:\n  - halve: {facter: 0.5}\n")


def test_a_step_name_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        step("quantize", stage=2)(type("Again", (Selected,), {"__doc__": "again"}))


def test_lowbit_needs_a_training_step_after_it():
    with pytest.raises(BitladderError, match="a finetune or distill step must follow it"):
        parse_recipe("model: digits\nsteps:\n  - lowbit: {bits: 2}\n")
