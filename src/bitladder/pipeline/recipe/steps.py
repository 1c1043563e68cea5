"""The body of each recipe step: a pydantic model (unknown fields rejected) whose ``check`` builds the
method's own config, so every value is validated before the pipeline starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr


class StepBody(BaseModel):
    """Base of every step's options: unknown keys are rejected."""
    model_config = ConfigDict(extra="forbid")

    def check(self) -> None:
        """Raise BitladderError for values the method rejects."""


class Selected(StepBody):
    """Options of a step that takes ``include`` / ``exclude`` layer patterns."""
    include: list[str] | None = None
    exclude: list[str] | None = None


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
            from bitladder.errors import BitladderError

            raise BitladderError("lowrank: data_aware applies to Linear factors only (conv: none)")
        self.config()


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


class Finetune(StepBody):
    """Train the current model: epochs, learning rate, optimizer, schedule and seed."""
    epochs: int = 10
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["cosine", "constant"] = "cosine"
    seed: int = 0

    def config(self):
        """The Train config with these options."""
        from bitladder.methods.train.trainer import Train

        return Train(**self.model_dump())

    def check(self) -> None:
        self.config()


class Distill(Finetune):
    """Finetune against the original float model as teacher (KL at ``temperature`` + labels, or cosine)."""

    temperature: float = 4.0
    alpha: float = 0.7


class Export(StepBody):
    """Export options: also write an ONNX file when ``onnx`` (at ``opset``, with these ``activations``)."""
    onnx: bool = False
    opset: int = 21
    activations: Literal["float", "dynamic", "dynamic-tensor"] = "float"

    def check(self) -> None:
        from bitladder.errors import BitladderError

        if self.onnx and not 13 <= self.opset <= 23:
            raise BitladderError(f"opset must be in 13..23, got {self.opset}")


class Evaluate(StepBody):
    """Fidelity, size, latency; robustness under input noise; per-layer sensitivity for the heatmap."""

    repeats: int = 10
    robustness: bool = True
    noise: list[float] = [0.1, 0.25, 0.5]
    sensitivity: list[str] = []
    _configs: dict = PrivateAttr(default_factory=dict)

    def configs(self) -> dict:
        """The ``sensitivity`` rungs parsed (once, at the recipe's check)."""
        from bitladder.pipeline.ladder.rungs import parse_rungs

        if not self._configs:
            self._configs = parse_rungs(self.sensitivity)
        return self._configs

    def check(self) -> None:
        from bitladder.errors import BitladderError

        if self.repeats < 1:
            raise BitladderError(f"repeats must be >= 1, got {self.repeats}")
        if any(not 0 < n <= 1 for n in self.noise):
            raise BitladderError(f"noise levels must be in (0, 1], got {self.noise}")
        self.configs()


STEPS: dict[str, type[StepBody]] = {"prune": Prune, "lowrank": LowRankStep, "quantize": Quantize,
                                    "lowbit": Lowbit, "finetune": Finetune, "distill": Distill,
                                    "export": Export, "evaluate": Evaluate}
