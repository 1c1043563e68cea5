"""``export``: options of the artifact's export (an ONNX file beside it)."""

from __future__ import annotations

from typing import Literal

from bitladder.errors import BitladderError
from bitladder.pipeline.recipe.steps.base import StepBody, step


@step("export", stage=4)
class Export(StepBody):
    """Export options: also write an ONNX file when ``onnx`` (at ``opset``, with these ``activations``; ``weights``
    "matmulnbits" writes Linear layers of 4 bits or fewer as onnxruntime's MatMulNBits)."""
    onnx: bool = False
    opset: int = 21
    activations: Literal["float", "dynamic", "dynamic-tensor"] = "float"
    weights: Literal["standard", "matmulnbits"] = "standard"
    transforms = False

    def check(self) -> None:
        if self.onnx and not 13 <= self.opset <= 23:
            raise BitladderError(f"opset must be in 13..23, got {self.opset}")
