"""``evaluate``: what the final measurement covers."""

from __future__ import annotations

from pydantic import PrivateAttr

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps.base import StepBody, step


@step("evaluate", stage=5)
class Evaluate(StepBody):
    """Fidelity, size, latency; robustness under input noise; per-layer sensitivity for the heatmap."""

    repeats: int = 10
    robustness: bool = True
    noise: list[float] = [0.1, 0.25, 0.5]
    sensitivity: list[str] = []
    _configs: dict = PrivateAttr(default_factory=dict)
    transforms = False

    def configs(self) -> dict:
        """The ``sensitivity`` rungs parsed (once, at the recipe's check)."""
        from bitladder.pipeline.ladder.rungs import parse_rungs

        if not self._configs:
            self._configs = parse_rungs(self.sensitivity)
        return self._configs

    def check(self) -> None:
        if self.repeats < 1:
            raise BitladderError(f"repeats must be >= 1, got {self.repeats}")
        if any(not 0 < n <= 1 for n in self.noise):
            raise BitladderError(f"noise levels must be in (0, 1], got {self.noise}")
        self.configs()
