"""What every recipe step shares: options as a pydantic model (unknown fields rejected, ``check`` builds the
method's own config so every value is validated before the pipeline starts), a place in the recipe's order,
and ``run`` on the pipeline's :class:`State`. A step registers with ``@step("name", stage=...)``."""

from __future__ import annotations

from pathlib import Path

from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from torch import nn

from bitladder.zoo.spec import ModelSpec

STEPS: dict[str, type["StepBody"]] = {}


def step(name: str, stage: int, training: bool = False, needs_training: bool = False):
    """Register a step under ``name``. ``stage`` orders the steps (1 prune/factorise, 2 quantize, 3 low-bit,
    4 export, 5 evaluate); ``training`` steps may come anywhere before export; ``needs_training``: a
    training step must follow."""

    def register(cls: type["StepBody"]) -> type["StepBody"]:
        if name in STEPS:
            raise ValueError(f"recipe step {name!r} is registered twice")
        cls.kind, cls.stage, cls.training, cls.needs_training = name, stage, training, needs_training
        STEPS[name] = cls
        return cls

    return register


@dataclass
class State:
    """What the recipe steps share: the spec, the current model, its structure record, configs and notes."""
    spec: ModelSpec
    model: nn.Module
    structure: list[dict] | None = None  # recorded when the model stops being float (quantize / lowbit)
    configs: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    out: Path | None = None  # the run's output folder (training checkpoints go there)
    trained: int = 0  # training steps run so far: each checkpoints to its own file

    def freeze_structure(self) -> None:
        """Record the current model's structure against a fresh float model, the first time only."""
        if self.structure is None:
            from bitladder.io.structure import describe

            self.structure = describe(self.model, self.spec.fresh_model())


class StepBody(BaseModel):
    """Base of every step's options: unknown keys are rejected."""
    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = ""
    stage: ClassVar[int] = 0
    training: ClassVar[bool] = False
    needs_training: ClassVar[bool] = False
    transforms: ClassVar[bool] = True  # run() changes the model (export and evaluate only configure the end)

    def check(self) -> None:
        """Raise BitladderError for values the method rejects."""

    def run(self, st: State) -> None:
        """Apply the step to the pipeline's state (the steps that only configure the end do nothing)."""


class Selected(StepBody):
    """Options of a step that takes ``include`` / ``exclude`` layer patterns."""
    include: list[str] | None = None
    exclude: list[str] | None = None


def finalize(st: State) -> nn.Module:
    """Convert quantisation-aware layers to packed ones; the model as it will be saved."""
    from bitladder.methods.train.qat import FakeQuantLayer, convert

    if any(isinstance(m, FakeQuantLayer) for m in st.model.modules()):
        st.model = convert(st.model)
    st.freeze_structure()
    return st.model.eval()
