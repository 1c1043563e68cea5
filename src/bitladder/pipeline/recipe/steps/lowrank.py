"""``lowrank``: SVD of Linear layers, or Tucker-2 / depthwise-separable substitution of Conv2d layers."""

from __future__ import annotations

from typing import Literal

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps.base import Selected, State, step


@step("lowrank", stage=1)
class LowRankStep(Selected):
    """SVD of Linear layers; with ``conv``: Tucker-2 or depthwise-separable substitution of Conv2d layers.

    ``data_aware`` (Linear only) whitens each layer by its calibration inputs first (SVD of ``W L``,
    ``X^T X = L L^T``): unset, whenever the model has calibration data; true, required; false, the SVD
    of the weight alone.
    """

    energy: float | None = None
    param_ratio: float | None = None
    conv: Literal["none", "tucker2", "separable"] = "none"
    data_aware: bool | None = None

    def config(self):
        """The factorisation config: ConvFactor when ``conv`` is set, else LowRank."""
        from bitladder.methods.lowrank.conv import ConvFactor
        from bitladder.methods.lowrank.svd import LowRank

        if self.conv != "none":
            return ConvFactor(kind=self.conv, energy=0.9 if self.energy is None else self.energy,
                              param_ratio=self.param_ratio)
        return LowRank(energy=self.energy, param_ratio=self.param_ratio)

    def check(self) -> None:
        if self.conv != "none" and self.data_aware:
            raise BitladderError("lowrank: data_aware applies to Linear factors only (conv: none)")
        self.config()

    def run(self, st: State) -> None:
        from bitladder.methods.lowrank.conv import factorize_convs
        from bitladder.methods.lowrank.svd import factorize

        cfg = self.config()
        if self.conv != "none":
            st.model = factorize_convs(st.model, cfg, include=self.include, exclude=self.exclude)
            st.configs.append(cfg.to_dict())
            return
        calib = st.spec.calib_batches if self.data_aware is not False else None
        if self.data_aware and not calib:
            raise BitladderError(f"lowrank data_aware: model {st.spec.name!r} has no calibration data "
                                 "(data_aware: false factors the weights alone)")
        st.model = factorize(st.model, cfg, include=self.include, exclude=self.exclude, calib=calib or None)
        st.configs.append({**cfg.to_dict(), "data_aware": bool(calib)})
