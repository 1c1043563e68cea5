"""``lowbit``: quantisation-aware layers (LSQ / XNOR), trained by the finetune or distill step after it."""

from __future__ import annotations

from typing import Literal

from bitladder.pipeline.recipe.steps.base import Selected, State, step


@step("lowbit", stage=3, needs_training=True)
class Lowbit(Selected):
    """Quantisation-aware layers (LSQ / XNOR) trained by the next finetune or distill step."""

    bits: int | Literal["ternary", "binary"] = 2
    binary_act: bool = False
    keep_first_last: bool = False

    def config(self):
        """The QAT config these options describe."""
        from bitladder.methods.train.qat import QAT

        return QAT(bits=self.bits, keep_first_last=self.keep_first_last, binary_act=self.binary_act)

    def check(self) -> None:
        self.config()

    def run(self, st: State) -> None:
        from bitladder.methods.train.qat import prepare_qat

        cfg = self.config()
        st.freeze_structure()
        st.model = prepare_qat(st.model, cfg, include=self.include, exclude=self.exclude)
        st.configs.append({"type": "QAT", "bits": cfg.bits, "binary_act": cfg.binary_act,
                           "keep_first_last": cfg.keep_first_last})
