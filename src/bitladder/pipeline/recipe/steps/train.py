"""``finetune`` and ``distill``: train the current model, on labels or against the float model as teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps.base import State, StepBody, step


@step("finetune", stage=0, training=True)
class Finetune(StepBody):
    """Train the current model: epochs, learning rate, optimizer, schedule and seed. ``checkpoint``: write the
    training state after every epoch into the output folder and, when the same recipe runs again there (after
    a kill), resume from it: the result equals an uninterrupted run. ``distributed``: ddp or fsdp under torchrun
    (default: the recipe's ``distributed: {mode: ...}``, else ddp)."""
    epochs: int = 10
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0
    checkpoint: bool = False
    distributed: Literal["ddp", "fsdp"] | None = None

    def config(self, path: Path | None = None):
        """The Train config with these options (checkpointing to ``path`` and resuming from it, if given)."""
        from bitladder.methods.train.trainer import Train

        extra = {"checkpoint": str(path), "resume": True} if path is not None else {}
        return Train(**self.model_dump(exclude={"checkpoint"}, exclude_none=True), **extra)

    def check(self) -> None:
        self.config()

    def teacher(self, st: State) -> nn.Module | None:
        """The model the student learns from: none, the labels are the target."""
        return None

    def run(self, st: State) -> None:
        from bitladder.methods.train.trainer import fit

        spec, teacher = st.spec, self.teacher(st)
        if not spec.train_batches:
            raise BitladderError(f"model {spec.name!r} has no training data for a {self.kind} step")
        if teacher is None and spec.train_targets is None:
            raise BitladderError(f"finetune needs labels and model {spec.name!r} has none; use distill (the float "
                                 "model as teacher)")
        path = st.out / f"{self.kind}-{st.trained}.ckpt.safetensors" if self.checkpoint and st.out else None
        st.trained += 1
        fit(st.model, spec.train_batches, spec.train_targets, self.config(path), teacher=teacher, metric=spec.metric)


@step("distill", stage=0, training=True)
class Distill(Finetune):
    """Finetune against the original float model as teacher (KL at ``temperature`` + labels, or cosine)."""

    temperature: float = 4.0
    alpha: float = 0.7

    def teacher(self, st: State) -> nn.Module | None:
        """The original float model."""
        return st.spec.model
