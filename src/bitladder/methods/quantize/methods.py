"""Method configs: *how* integer weights are chosen (the format config says *what* they become).

Each is a small frozen dataclass with a version; ``Int(bits=4, group=64, method=GPTQ())``.
Methods that need data say so (``needs_data``) and how many calibration samples at least.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

from bitladder.errors import BitladderError


class _Method:
    version: ClassVar[int] = 1
    needs_data: ClassVar[bool] = False
    min_samples: ClassVar[int] = 0

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "version": self.version, **asdict(self)}

    @property
    def name(self) -> str:
        return type(self).__name__.lower()


@dataclass(frozen=True)
class RTN(_Method):
    """Round to nearest; ``clip_search`` picks the per-block range that minimises squared error.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(64, 8), bitladder.Int(3, group=32, method=RTN(clip_search=True)))
    >>> m.qweight.qtype.name
    'int3'
    """

    clip_search: bool = False


@dataclass(frozen=True)
class GPTQ(_Method):
    """GPTQ (Frantar et al., 2022): column-by-column rounding with second-order error feedback.

    ``damp`` is added to the Hessian diagonal as a fraction of its mean; ``act_order`` processes
    columns by decreasing Hessian diagonal (groups stay the stored contiguous groups, with their
    scales fixed up front); ``block_size`` columns are updated lazily together.

    >>> import torch, bitladder
    >>> lin = torch.nn.Linear(32, 8)
    >>> x = torch.randn(256, 32)
    >>> q = bitladder.quantize(lin, bitladder.Int(4, group=16, method=GPTQ()), calib=[x])
    >>> float((q(x) - lin(x)).pow(2).mean()) < float((bitladder.quantize(lin, bitladder.Int(4, group=16))(x) - lin(x)).pow(2).mean())
    True
    """

    damp: float = 0.01
    act_order: bool = True
    block_size: int = 128
    clip_search: bool = True
    needs_data: ClassVar[bool] = True
    min_samples: ClassVar[int] = 16

    def __post_init__(self) -> None:
        if not 0 < self.damp < 1:
            raise BitladderError(f"GPTQ damp must be in (0, 1), got {self.damp}")
        if self.block_size < 1:
            raise BitladderError(f"GPTQ block_size must be positive, got {self.block_size}")


METHOD_TYPES = {c.__name__: c for c in (RTN, GPTQ)}


def method_from_dict(d: dict) -> _Method:
    d = dict(d)
    kind, version = d.pop("type", None), d.pop("version", None)
    if kind not in METHOD_TYPES:
        raise BitladderError(f"unknown method {kind!r}; known: {', '.join(METHOD_TYPES)}")
    if version != METHOD_TYPES[kind].version:
        raise BitladderError(f"{kind} version {version!r} is not supported")
    return METHOD_TYPES[kind](**d)
