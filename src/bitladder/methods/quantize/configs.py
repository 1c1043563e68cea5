"""One config per rung family. Each validates on construction and serialises with a version.

The configs describe *what* a weight becomes (format, scale layout); :func:`bitladder.quantize`
applies one to a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from bitladder.errors import BitladderError
from bitladder.formats.layout import Layout
from bitladder.formats.qtypes import QTYPES, QType, get_qtype
from bitladder.methods.quantize.config_base import (CONFIG_TYPES, FOR_KIND, ConfigBase, check_kernel, check_layout,
                                                    config)
from bitladder.methods.quantize.methods import HQQ, RTN, Act, Tune, _Method, method_from_dict

__all__ = ["CONFIG_TYPES", "FOR_KIND", "FLOAT_FORMATS", "Float", "Int", "Ternary", "Binary", "Codebook", "Format",
           "QuantConfig", "config", "config_from_dict"]

FLOAT_FORMATS = tuple(n for n, q in QTYPES.items() if q.is_float)


@config("float")
@dataclass(frozen=True)
class Float(ConfigBase):
    """Store weights in a float format: fp64, fp32, fp16, bf16, fp8_e4m3 or fp8_e5m2.

    fp16 and wider are plain casts; fp8 carries one scale per output channel (``amax / fmax``).

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(8, 4), Float("bf16"))
    >>> m.qweight.qtype.name, m.qweight.nbytes
    ('bf16', 64)
    """

    format: str = "fp16"
    granularity: str = "channel"
    group: int | None = None
    scale_dtype: str = "fp32"

    @classmethod
    def from_rung(cls, qtype: QType, **kw) -> "Float":
        return cls(qtype.name, **kw)

    def __post_init__(self) -> None:
        if self.format not in FLOAT_FORMATS:
            raise BitladderError(f"unknown float format {self.format!r}; accepted: {', '.join(FLOAT_FORMATS)}")
        check_layout(self)

    @property
    def qtype(self) -> str:
        """The format's name in the table."""
        return self.format

    @property
    def symmetric(self) -> bool:
        """Float formats carry no zero point."""
        return True

    def layout(self, axis: int = 0) -> Layout:
        """The scale layout: the configured one for fp8 formats, per tensor for the others."""
        if self.format in ("fp8_e4m3", "fp8_e5m2"):
            return super().layout(axis)
        return Layout("tensor")


@config("int")
@dataclass(frozen=True)
class Int(ConfigBase):
    """Integer weights of 2 to 8 bits, round-to-nearest, symmetric or asymmetric.

    ``group=G`` gives one scale per G consecutive input elements; otherwise ``granularity`` is
    "channel" (one scale per output channel, the default) or "tensor". ``method`` chooses the
    codes: ``RTN()`` (default, data-free) or a calibrated method such as ``GPTQ()``. ``act=Act(...)``
    adds static activation quantisation (calibrated). ``equalize`` applies cross-layer equalisation
    first (data-free); ``bias_correction`` re-centres each layer's output on calibration data;
    ``rotate=B`` rotates each Linear's input by a block-Hadamard of up to B channels first
    (:mod:`bitladder.methods.quantize.hadamard`). ``tune=Tune()`` then trains each block's codes and scales
    to reproduce the float block's output on calibration data (:mod:`bitladder.methods.quantize.blocktune`).
    ``kernel`` picks the compute path of Linear layers: "auto" (fastest measured for the format and
    row count, see :mod:`bitladder.kernels.select`), "dequant-fp32" (exact weight-only reference), or
    a named kernel. fbgemm and onnxruntime kernels quantise activations to 8 bits per call.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(64, 32), Int(bits=4, group=32))
    >>> m.qweight.qtype.name, m.qweight.bits_per_weight
    ('int4', 4.5)
    """

    bits: int = 8
    group: int | None = None
    granularity: str = "channel"
    symmetric: bool = True
    scale_dtype: str = "fp16"
    method: _Method = field(default_factory=RTN)
    act: Act | None = None
    bias_correction: bool = False
    equalize: bool = False
    kernel: str = "auto"
    rotate: int | None = None
    tune: Tune | None = None
    rung_options: ClassVar[tuple[str, ...]] = ("symmetric", "method", "act", "rotate", "tune")

    @classmethod
    def takes(cls, qtype: QType) -> bool:
        return qtype.signed  # unsigned grids are the -asym form of the signed name

    @classmethod
    def from_rung(cls, qtype: QType, **kw) -> "Int":
        return cls(bits=int(qtype.bits), **kw)

    def __post_init__(self) -> None:
        if self.rotate is not None and (not isinstance(self.rotate, int) or self.rotate < 2
                                        or self.rotate & (self.rotate - 1)):
            raise BitladderError(f"rotate is the largest Hadamard block, a power of two >= 2 (e.g. 64); "
                                 f"got {self.rotate!r}")
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise BitladderError(f"Int bits must be an integer in 2..8, got {self.bits!r} (1 bit: use Binary)")
        if isinstance(self.method, dict):
            object.__setattr__(self, "method", method_from_dict(self.method))
        check_kernel(self)
        if not isinstance(self.method, _Method) or isinstance(self.method, Act):
            raise BitladderError(f"method must be a method config such as RTN() or GPTQ(), got {self.method!r}")
        if isinstance(self.method, HQQ) and self.symmetric:
            raise BitladderError("HQQ optimises zero points: use an asymmetric format (symmetric=False)")
        if isinstance(self.act, dict):
            object.__setattr__(self, "act", method_from_dict(self.act))
        if self.act is not None and not isinstance(self.act, Act):
            raise BitladderError(f"act must be an Act(...) config or None, got {self.act!r}")
        if isinstance(self.tune, dict):
            object.__setattr__(self, "tune", method_from_dict(self.tune))
        if self.tune is not None and not isinstance(self.tune, Tune):
            raise BitladderError(f"tune must be a Tune(...) config or None, got {self.tune!r}")
        if self.tune is not None and self.act is not None:
            raise BitladderError("tune trains weight-only rungs: drop act (activation quantisation) or tune")
        check_layout(self)

    @property
    def qtype(self) -> str:
        """intN, or uintN when asymmetric."""
        return f"int{self.bits}" if self.symmetric else f"uint{self.bits}"


@config("ternary")
@dataclass(frozen=True)
class Ternary(ConfigBase):
    """Weights in {-1, 0, +1} times an absmean scale (BitNet b1.58), packed 5 per byte.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(40, 8), Ternary())
    >>> sorted(set(m.qweight.codes().flatten().tolist())) <= [-1, 0, 1]
    True
    """

    granularity: str = "channel"
    group: int | None = None
    scale_dtype: str = "fp16"
    kernel: str = "auto"
    qtype: ClassVar[str] = "ternary"
    symmetric: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_layout(self)
        check_kernel(self)


@config("binary")
@dataclass(frozen=True)
class Binary(ConfigBase):
    """Weights in {-1, +1} times an absmean scale per channel (XNOR-Net), one bit each.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(64, 8), Binary())
    >>> m.qweight.nbytes    # 64*8 bits + 8 fp16 scales
    80
    """

    granularity: str = "channel"
    group: int | None = None
    scale_dtype: str = "fp16"
    kernel: str = "auto"
    qtype: ClassVar[str] = "binary"
    symmetric: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_layout(self)
        check_kernel(self)


@config("codebook")
@dataclass(frozen=True)
class Codebook(ConfigBase):
    """Non-uniform weights: k-means centroids (``2**bits`` of them, per output channel or per
    tensor) in an fp16 table, each weight an index of ``bits`` bits.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(64, 8), Codebook(bits=3))
    >>> m.qweight.nbytes     # 512 indices x 3 bits + 8 rows x 8 fp16 centroids
    320
    """

    bits: int = 4
    granularity: str = "channel"
    iters: int = 25
    group: ClassVar[None] = None
    scale_dtype: ClassVar[str] = "fp16"
    symmetric: ClassVar[bool] = False

    @classmethod
    def from_rung(cls, qtype: QType, **kw) -> "Codebook":
        if "group" in kw:
            raise BitladderError("codebooks are per channel (-pc) or per tensor (-pt), not in groups")
        return cls(bits=int(qtype.bits), **kw)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise BitladderError(f"Codebook bits must be an integer in 1..8, got {self.bits!r}")
        if self.granularity not in ("tensor", "channel"):
            raise BitladderError(f"Codebook granularity must be 'tensor' or 'channel', got {self.granularity!r}")

    @property
    def qtype(self) -> str:
        """cbN."""
        return f"cb{self.bits}"


@config()
@dataclass(frozen=True)
class Format(ConfigBase):
    """Round to nearest in any format of the table whose kind has no config of its own (e.g. ``nf4``,
    NormalFloat): one absmax scale per output channel, per group of ``group`` inputs, or per tensor.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(64, 8), Format("nf4", group=32))
    >>> m.qweight.qtype.name, m.qweight.bits_per_weight
    ('nf4', 4.5)
    """

    format: str = "nf4"
    granularity: str = "channel"
    group: int | None = None
    scale_dtype: str = "fp16"
    symmetric: ClassVar[bool] = True

    @classmethod
    def from_rung(cls, qtype: QType, **kw) -> "Format":
        return cls(qtype.name, **kw)

    def __post_init__(self) -> None:
        kind = get_qtype(self.format).kind
        own = FOR_KIND.get(kind)
        if own is not None:
            raise BitladderError(f"{self.format} is a {kind} format: use {own.__name__}(...)")
        check_layout(self)

    @property
    def qtype(self) -> str:
        """The format's name in the table."""
        return self.format


QuantConfig = Float | Int | Ternary | Binary | Codebook | Format


def config_from_dict(d: dict) -> QuantConfig:
    """Rebuild a config written by ``to_dict`` (unknown types, versions or fields are errors)."""
    d = dict(d)
    kind = d.pop("type", None)
    version = d.pop("version", None)
    if kind not in CONFIG_TYPES:
        raise BitladderError(f"unknown config type {kind!r}; known: {', '.join(CONFIG_TYPES)}")
    cls = CONFIG_TYPES[kind]
    if version != cls.version:
        raise BitladderError(f"{kind} config version {version!r} is not supported (this build reads {cls.version})")
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise BitladderError(f"unknown {kind} fields: {sorted(unknown)}; accepted: {sorted(names)}")
    return cls(**d)
