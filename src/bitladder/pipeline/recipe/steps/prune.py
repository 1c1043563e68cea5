"""``prune``: magnitude (unstructured), N:M, or channels (structured by dependency groups, removed physically).

Channels: ``sparsity`` is the fraction removed, of each group's channels (``target: channels``) or of the
model's measured FLOPs or parameters (``target: flops`` / ``params``, least important groups first over the
whole model, none losing more than ``max_group``; ``latency: true`` favours what saves time here, ``round_to``
keeps channel counts whole multiples of a number or of the CPU's vector width, ``simd``). ``steps`` > 1 prunes on the cubic schedule, fine-tuning
``finetune_epochs`` epochs after each step (on labels, or against the float model for embedders).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps.base import Selected, State, step


@step("prune", stage=1)
class Prune(Selected):
    """magnitude (unstructured), nm (N:M), or channels (structured, removed physically)."""

    method: Literal["magnitude", "nm", "channels"] = "magnitude"
    sparsity: float = 0.5
    scope: Literal["layer", "global"] = "layer"
    n: int = 2
    m: int = 4
    importance: Literal["l1", "l2", "taylor"] = "l1"
    target: Literal["channels", "flops", "params"] = "channels"
    max_group: float = 0.9
    latency: bool = False
    round_to: int | Literal["simd"] = Field(1)
    steps: int = Field(1, ge=1)
    finetune_epochs: int = Field(0, ge=0)
    lr: float = 1e-3

    def config(self):
        """The pruning config these options select: Magnitude, NM or ChannelPrune."""
        from bitladder.methods.prune.configs import NM, Magnitude
        from bitladder.methods.prune.structured import ChannelPrune

        if self.method == "channels":
            return ChannelPrune(ratio=self.sparsity, importance=self.importance, target=self.target,
                                max_group=self.max_group, latency=self.latency,
                                round_to=self.round_to)
        if self.target != "channels" or self.steps > 1 or self.finetune_epochs:
            raise BitladderError("prune: target, steps and finetune_epochs apply to method: channels only")
        if self.method == "nm":
            return NM(n=self.n, m=self.m)
        return Magnitude(sparsity=self.sparsity, scope=self.scope)

    def check(self) -> None:
        self.config()

    def run(self, st: State) -> None:
        cfg = self.config()
        if self.method == "channels":
            self._channels(st, cfg)
        else:
            from bitladder.methods.prune.magnitude import prune

            st.model = prune(st.model, cfg, include=self.include, exclude=self.exclude)
        extra = {"steps": self.steps, "finetune_epochs": self.finetune_epochs} if self.method == "channels" else {}
        st.configs.append({**cfg.to_dict(), **extra})

    def _tune(self, st: State):
        from bitladder.methods.train.trainer import Train, fit

        spec = st.spec
        if not self.finetune_epochs:
            return lambda m: m
        if not spec.train_batches:
            raise BitladderError(f"prune finetune_epochs: model {spec.name!r} has no training data")
        teacher = None if spec.train_targets is not None else spec.model
        cfg = Train(epochs=self.finetune_epochs, lr=self.lr)
        return lambda m: fit(m, spec.train_batches, spec.train_targets, cfg, teacher=teacher, metric=spec.metric)

    def _channels(self, st: State, cfg) -> None:
        from bitladder.methods.prune.schedule import iterative_channel_prune

        spec = st.spec
        example = spec.train_batches[0] if spec.train_batches else spec.calib_batches[0]
        target = spec.train_targets[0] if spec.train_targets else None
        kw = {"target": target, "include": self.include, "exclude": self.exclude,
              "batches": spec.train_batches or spec.calib_batches, "metric": spec.metric}
        st.model, reports = iterative_channel_prune(st.model, cfg, example, self.steps, self._tune(st), **kw)
        first, last = reports[0], reports[-1]
        f0, f1 = first["flops"][0], last["flops"][1]
        p0, p1 = first["params"][0], last["params"][1]
        st.notes.append(f"channels pruned: FLOPs {f1 / f0:.0%} and parameters {p1 / p0:.0%} of the original "
                        f"(measured) in {self.steps} step(s)")
        if last.get("skipped"):
            st.notes.append("not pruned: " + "; ".join(f"{n} ({why})" for n, why in last["skipped"].items()))
