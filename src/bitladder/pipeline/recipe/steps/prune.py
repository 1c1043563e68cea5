"""``prune``: magnitude (unstructured), N:M, or channels (structured, removed physically)."""

from __future__ import annotations

from typing import Literal

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

    def config(self):
        """The pruning config these options select: Magnitude, NM or ChannelPrune."""
        from bitladder.methods.prune.configs import NM, Magnitude
        from bitladder.methods.prune.structured import ChannelPrune

        if self.method == "channels":
            return ChannelPrune(ratio=self.sparsity, importance=self.importance)
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
        st.configs.append(cfg.to_dict() if hasattr(cfg, "to_dict") else {"type": type(cfg).__name__, **vars(cfg)})

    @staticmethod
    def _channels(st: State, cfg) -> None:
        from bitladder.methods.prune.structured import prune_channels

        spec = st.spec
        example = spec.train_batches[0] if spec.train_batches else spec.calib_batches[0]
        if isinstance(example, dict):
            raise BitladderError("channel pruning traces a model called on one tensor; this model takes keyword "
                                 "inputs (use method: magnitude or nm)")
        target = spec.train_targets[0] if spec.train_targets else None
        st.model, report = prune_channels(st.model, cfg, example, target=target)
        if report.get("skipped"):
            st.notes.append("not pruned: " + "; ".join(f"{n} ({why})" for n, why in report["skipped"].items()))
