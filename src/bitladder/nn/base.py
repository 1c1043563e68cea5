"""Base class of quantised modules: the packed weight lives in buffers, metadata beside it."""

from __future__ import annotations

import torch
from torch import nn

from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import get_qtype
from bitladder.tensor.quantized import QuantizedTensor

_PARTS = ("packed", "scale", "zero_point")


class QuantModule(nn.Module):
    """A layer whose weight is a :class:`QuantizedTensor`.

    Subclasses set ``weight_axis`` (the output-channel axis of the float weight) and implement
    ``forward`` (and ``from_float(module, qweight)`` when the default, which keeps the bias, is not
    enough). ``kernel`` names the compute path actually
    used; the ladder report shows it per layer.
    """

    weight_axis: int = 0

    def __init__(self, qweight: QuantizedTensor) -> None:
        super().__init__()
        self._qmeta = qweight.meta()
        self.n_clipped = qweight.n_clipped
        for part, t in qweight.tensors().items():
            self.register_buffer(f"weight_{part}", t)
        # fp64 weights compute in fp64; everything else dequantises to fp32 for now
        self.compute_dtype = torch.float64 if qweight.qtype.name == "fp64" else torch.float32
        self.kernel = "fp64" if qweight.qtype.name == "fp64" else (
            "fp32" if qweight.qtype.name == "fp32" else "dequant-fp32")

    @property
    def qweight(self) -> QuantizedTensor:
        t = {p: getattr(self, f"weight_{p}") for p in _PARTS if hasattr(self, f"weight_{p}")}
        return QuantizedTensor(t["packed"], t.get("scale"), t.get("zero_point"), get_qtype(self._qmeta["qtype"]),
                               tuple(self._qmeta["shape"]), Layout(**self._qmeta["layout"]), self.n_clipped)

    @property
    def qmeta(self) -> dict:
        return dict(self._qmeta)

    def weight(self) -> torch.Tensor:  # noqa: D401 - a method, not a Parameter, on purpose
        """The dequantised weight, in the compute dtype."""
        return self.qweight.dequantize(self.compute_dtype)

    def _bias(self) -> torch.Tensor | None:
        b = getattr(self, "bias", None)
        return None if b is None else b.to(self.compute_dtype)

    @classmethod
    def from_float(cls, module: nn.Module, qweight: QuantizedTensor) -> "QuantModule | None":
        """Build from the float module; the default keeps its bias. Return None to leave it in float."""
        qm = cls(qweight)
        b = getattr(module, "bias", None)
        qm.bias = None if b is None else nn.Parameter(b.detach().clone(), requires_grad=False)
        return qm

    @classmethod
    def skeleton(cls, module: nn.Module, meta: dict, tensors: dict[str, torch.Tensor]) -> "QuantModule":
        """Rebuild from stored parts (used when loading an artifact)."""
        return cls.from_float(module, QuantizedTensor.from_parts(tensors, meta))

    def extra_repr(self) -> str:
        m = self._qmeta
        return f"{m['qtype']}, shape={tuple(m['shape'])}, layout={m['layout']}, kernel={self.kernel}"
