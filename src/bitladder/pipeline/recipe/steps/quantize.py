"""``quantize``: post-training quantisation to a rung."""

from __future__ import annotations

from pydantic import PrivateAttr

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps.base import Selected, State, step


@step("quantize", stage=2)
class Quantize(Selected):
    """Post-training quantisation to a rung (``int4-g32``, ``int8-a8``, ``int3-g64-asym-gptq``, ...)."""

    rung: str
    _config: object = PrivateAttr(default=None)

    def config(self):
        """The quantisation config of ``rung`` (parsed once, at the recipe's check)."""
        from bitladder.pipeline.ladder.rungs import parse_rung

        if self._config is None:
            self._config = parse_rung(self.rung)
        return self._config

    def check(self) -> None:
        self.config()

    def run(self, st: State) -> None:
        from bitladder.methods.quantize.api import quantize

        cfg = self.config()
        st.freeze_structure()
        needs = cfg.needs_calibration
        if needs and not st.spec.calib_batches:
            raise BitladderError(f"rung {self.rung!r} needs calibration data and model {st.spec.name!r} has none")
        st.model = quantize(st.model, cfg, include=self.include, exclude=self.exclude,
                            calib=st.spec.calib_batches if needs else None)
        st.configs.append({"rung": self.rung, **cfg.to_dict()})
