"""Method configs: *how* integer weights are chosen (the format config says *what* they become).

Each is a small frozen dataclass with a version; ``Int(bits=4, group=64, method=GPTQ())``.
Methods that need data say so (``needs_data``) and how many calibration samples at least.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

from bitladder.errors import BitladderError


METHOD_TYPES: dict[str, type] = {}  # by class name: how configs are read back
RUNG_METHODS: dict[str, Callable[[], "_Method"]] = {}  # by rung suffix (``int4-g64-gptq``)


def method(*rung_names: str, **variants: dict):
    """Register a method config class; ``rung_names`` name it in rungs, ``variants`` name preset instances
    (``clip={"clip_search": True}`` makes ``-clip`` mean ``RTN(clip_search=True)``)."""

    def register(cls: type) -> type:
        METHOD_TYPES[cls.__name__] = cls
        for n in rung_names:
            RUNG_METHODS[n] = cls
        for n, kw in variants.items():
            RUNG_METHODS[n] = lambda kw=kw: cls(**kw)
        return cls

    return register


class _Method:
    version: ClassVar[int] = 1
    needs_data: ClassVar[bool] = False
    min_samples: ClassVar[int] = 0

    def to_dict(self) -> dict:
        return {"type": type(self).__name__, "version": self.version, **asdict(self)}

    @property
    def name(self) -> str:
        return type(self).__name__.lower()


@method("rtn", clip={"clip_search": True})
@dataclass(frozen=True)
class RTN(_Method):
    """Round to nearest; ``clip_search`` picks the per-block range that minimises squared error.

    >>> import torch, bitladder
    >>> m = bitladder.quantize(torch.nn.Linear(64, 8), bitladder.Int(3, group=32, method=RTN(clip_search=True)))
    >>> m.qweight.qtype.name
    'int3'
    """

    clip_search: bool = False


@method("gptq")
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


@method("awq")
@dataclass(frozen=True)
class AWQ(_Method):
    """AWQ (Lin et al., 2023): activation-aware channel scaling searched on ``grid`` exponents,
    then activation-weighted clipping. Linear-like layers; others fall back to round-to-nearest.
    With ``fold`` (on families with fold rules, :mod:`bitladder.methods.quantize.fold`) the layers reading
    one tensor share a scale whose inverse goes into the norm or Linear producing it, so the model exports
    to formats without input multipliers; elsewhere each layer keeps its own multiplier (``in_scale``).

    >>> import torch, bitladder
    >>> lin = torch.nn.Linear(32, 8)
    >>> q = bitladder.quantize(lin, bitladder.Int(4, group=16, method=AWQ()), calib=[torch.randn(64, 32)])
    >>> q.qmeta["method"], "in_scale" in q.qmeta
    ('awq', True)
    """

    grid: int = 20
    clip_search: bool = True
    fold: bool = True
    needs_data: ClassVar[bool] = True
    min_samples: ClassVar[int] = 16

    def __post_init__(self) -> None:
        if self.grid < 1:
            raise BitladderError(f"AWQ grid must be positive, got {self.grid}")


@method("hqq")
@dataclass(frozen=True)
class HQQ(_Method):
    """HQQ (Badri & Shaji, 2023): data-free zero-point optimisation with a sparse (l_p) error model.
    Needs an asymmetric format (``symmetric=False``); zero points are stored as fp16.

    >>> import torch, bitladder
    >>> q = bitladder.quantize(torch.nn.Linear(64, 8), bitladder.Int(3, group=32, symmetric=False, method=HQQ()))
    >>> q.qmeta["method"], q.qweight.zero_point.dtype
    ('hqq', torch.float16)
    """

    iters: int = 20
    lp: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01

    def __post_init__(self) -> None:
        if not 0 < self.lp <= 1:
            raise BitladderError(f"HQQ lp must be in (0, 1], got {self.lp}")
        if self.iters < 1:
            raise BitladderError(f"HQQ iters must be positive, got {self.iters}")


@method("adaround")
@dataclass(frozen=True)
class AdaRound(_Method):
    """AdaRound (Nagel et al., 2020): learned up/down rounding per weight, ``iters`` Adam steps on
    calibration rows of each layer's input (block by block, after the layers before it).

    >>> import torch, bitladder
    >>> lin = torch.nn.Linear(32, 8)
    >>> q = bitladder.quantize(lin, bitladder.Int(3, method=AdaRound(iters=50)), calib=[torch.randn(64, 32)])
    >>> q.qmeta["method"]
    'adaround'
    """

    iters: int = 500
    lr: float = 1e-2
    reg: float = 0.01
    batch: int = 256
    needs_data: ClassVar[bool] = True
    min_samples: ClassVar[int] = 16

    def __post_init__(self) -> None:
        if self.iters < 1 or self.lr <= 0 or self.reg < 0 or self.batch < 1:
            raise BitladderError("AdaRound needs iters >= 1, lr > 0, reg >= 0 and batch >= 1")


@method()
@dataclass(frozen=True)
class Tune(_Method):
    """Block-wise output reconstruction after any weight method (``Int(..., tune=Tune())``, rung suffix
    ``-tune``): each repeated block (a model without them: the whole model) is trained, with its codes'
    rounding offsets and its scales as the only free values, to reproduce the float block's output on the
    calibration data, the quantised blocks before it feeding it (AutoRound's signed gradient descent, Cheng et
    al. 2023, started from the method's own codes). ``iters`` steps per block of ``batch`` samples each
    (calibration batches are split); ``lr`` the first signed step (None: ``6 / iters``, the best of
    0.0075-0.06 at 200 steps on MiniLM W2), decaying linearly to 0. A code moves by at most one grid step and
    a scale by at most ``max_scale_change`` (a factor, either way). A quarter of the samples is held out; each
    block keeps the state along training (untrained included) with the lowest held-out loss. ``bias`` also
    trains the layers' biases.

    >>> Tune(iters=100).to_dict()["iters"]
    100
    """

    iters: int = 200
    lr: float | None = None
    max_scale_change: float = 1.5
    bias: bool = False
    batch: int = 8
    seed: int = 0
    needs_data: ClassVar[bool] = True
    min_samples: ClassVar[int] = 16

    def __post_init__(self) -> None:
        if not isinstance(self.iters, int) or self.iters < 1:
            raise BitladderError(f"Tune iters must be a positive integer, got {self.iters!r}")
        if self.lr is not None and not self.lr > 0:
            raise BitladderError(f"Tune lr must be positive (or None: 6 / iters), got {self.lr!r}")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise BitladderError(f"Tune batch (samples per step) must be a positive integer, got {self.batch!r}")
        if not self.max_scale_change >= 1:
            raise BitladderError(f"Tune max_scale_change is a factor >= 1, got {self.max_scale_change!r}")

    @property
    def step(self) -> float:
        """The first signed step (decays linearly to 0 over ``iters``)."""
        return self.lr if self.lr is not None else 6 / self.iters


OBSERVER_NAMES = ("minmax", "ema", "percentile", "mse", "kl")


@method()
@dataclass(frozen=True)
class Act(_Method):
    """Static activation quantisation of each quantised layer's input (W8A8 and lower).

    ``observer`` picks the calibrated range (minmax, ema, percentile, mse, kl); ``smoothquant``
    (alpha in [0, 1], Xiao et al. 2022) first moves activation outliers into the weights with a
    per-input-channel scale ``s = max|x|^alpha / max|w|^(1-alpha)`` (Linear layers); ``"auto"``
    searches alpha per layer for the smallest output error of the quantised layer on calibration rows.
    ``smooth_layers``: ``"norm"`` smooths the layers that read a normalisation layer's output, as the
    paper places it (q/k/v, the first FFN layer), or every selected layer in a model without such
    layers; ``"all"`` every selected layer; ``"auto"`` is ``"norm"`` for per-token activations and
    ``"all"`` otherwise (on MiniLM each is the more faithful for its activations, and ``"norm"`` saves four
    multiplies per block: docs/DESIGN.md, 'SmoothQuant goes where the paper puts it'). Layers that read one
    tensor share one scale.
    ``dynamic="token"`` (or ``True``) calibrates no static scale: the int8 kernel (fbgemm) quantises
    each call's activations itself, one scale per row (token), after the SmoothQuant scaling (int8
    weights per channel only; a Conv2d takes one scale per call either way, on oneDNN's integer
    convolution); ``dynamic="tensor"`` uses one scale per call: faster but less faithful (measured on
    MiniLM: docs/DESIGN.md, 'Per-token W8A8 on a per-tensor GEMM'; docs/results/bench-minilm.json).
    ``outliers=k`` (static activations): each Linear's ``k`` input channels of widest calibrated range (after
    SmoothQuant) leave the integer GEMM for a float product beside it, so the grid fits the other channels
    (:mod:`bitladder.nn.outliers`; on MiniLM 16 channels take static W8A8 from 0.998 to 0.999 mean cosine:
    docs/DESIGN.md, 'Outlier channels beside a static GEMM').
    ``static_layers="norm"``: static scales only for the layers that read a normalisation layer's output
    (q/k/v, the first FFN layer; their ranges hold from batch to batch); the other layers (attention output,
    the second FFN layer, whose inputs carry the outliers) take per-token activations on the int8 kernel.

    >>> import torch, bitladder
    >>> lin = torch.nn.Linear(16, 4)
    >>> q = bitladder.quantize(lin, bitladder.Int(8, act=Act(observer="percentile")), calib=[torch.randn(64, 16)])
    >>> q.qmeta["act"]
    {'qtype': 'uint8', 'observer': 'percentile'}
    """

    bits: int = 8
    observer: str = "minmax"
    symmetric: bool = False
    smoothquant: float | str | None = None
    dynamic: bool | str = False
    smooth_layers: str = "auto"
    static_layers: str = "all"
    outliers: int = 0
    min_samples: ClassVar[int] = 8

    @property
    def needs_data(self) -> bool:
        """Static grids and SmoothQuant's scales come from calibration; per-call dynamic activations alone do not."""
        return not (self.dynamic and self.smoothquant is None)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 2 <= self.bits <= 8:
            raise BitladderError(f"Act bits must be an integer in 2..8, got {self.bits!r}")
        if self.observer not in OBSERVER_NAMES:
            raise BitladderError(f"unknown observer {self.observer!r}; accepted: {', '.join(OBSERVER_NAMES)}")
        if self.dynamic not in (False, True, "token", "tensor"):
            raise BitladderError(f"dynamic must be False, 'token' or 'tensor', got {self.dynamic!r}")
        if self.dynamic is True:
            object.__setattr__(self, "dynamic", "token")
        if self.dynamic and self.bits != 8:
            raise BitladderError("dynamic activation quantisation runs on the int8 kernel: bits must be 8")
        sq = self.smoothquant
        if sq is not None and sq != "auto" and not (isinstance(sq, int | float) and 0 <= sq <= 1):
            raise BitladderError(f"smoothquant must be an alpha in [0, 1] or 'auto', got {sq!r}")
        if self.smooth_layers not in ("auto", "norm", "all"):
            raise BitladderError(f"smooth_layers must be 'auto', 'norm' or 'all', got {self.smooth_layers!r}")
        if self.static_layers not in ("all", "norm"):
            raise BitladderError(f"static_layers must be 'all' or 'norm', got {self.static_layers!r}")
        if not isinstance(self.outliers, int) or isinstance(self.outliers, bool) or self.outliers < 0:
            raise BitladderError(f"Act outliers must be a number of channels >= 0, got {self.outliers!r}")
        if self.outliers and self.dynamic:
            raise BitladderError("Act outliers split a static grid's widest channels off; per-call (dynamic) "
                                 "activations have no fixed channels: drop dynamic or outliers")
        if self.static_layers == "norm" and (self.dynamic or self.bits != 8):
            raise BitladderError("static_layers='norm' mixes static 8-bit and per-token activations: "
                                 "dynamic must be False and bits 8")

    @property
    def qtype(self) -> str:
        """The activation format: intN (symmetric) or uintN."""
        return f"int{self.bits}" if self.symmetric else f"uint{self.bits}"

    @property
    def smoothed_layers(self) -> str:
        """``smooth_layers`` with ``"auto"`` resolved: ``"norm"`` per token (or static on norm-fed layers only),
        ``"all"`` otherwise."""
        if self.smooth_layers != "auto":
            return self.smooth_layers
        return "norm" if self.dynamic == "token" or self.static_layers == "norm" else "all"


def method_from_dict(d: dict) -> _Method:
    """Rebuild a method from its ``to_dict`` form; BitladderError on an unknown type or version."""
    d = dict(d)
    kind, version = d.pop("type", None), d.pop("version", None)
    if kind not in METHOD_TYPES:
        raise BitladderError(f"unknown method {kind!r}; known: {', '.join(METHOD_TYPES)}")
    if version != METHOD_TYPES[kind].version:
        raise BitladderError(f"{kind} version {version!r} is not supported")
    return METHOD_TYPES[kind](**d)
