"""What every format config shares: the registry (by class name, and by number kind), the checks of a
scale layout and a kernel policy, and the rung hooks (``takes``, ``from_rung``, ``rung_options``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import ClassVar

from bitladder.errors import BitladderError
from bitladder.formats.layout import GRANULARITIES, Layout
from bitladder.formats.qtypes import QType
from bitladder.kernels.select import policies
from bitladder.methods.quantize.methods import _Method
from bitladder.tensor.quantized import SCALE_DTYPES

CONFIG_TYPES: dict[str, type] = {}  # by class name: how configs are read back
FOR_KIND: dict[str, type] = {}  # the config a format of each number kind takes (others: Format)


def config(*kinds: str):
    """Register a config class, as the one for formats of ``kinds``."""

    def register(cls: type) -> type:
        CONFIG_TYPES[cls.__name__] = cls
        for k in kinds:
            FOR_KIND[k] = cls
        return cls

    return register


def check_kernel(cfg) -> None:
    """A kernel policy this build knows."""
    if cfg.kernel not in policies():
        raise BitladderError(f"unknown kernel {cfg.kernel!r}; accepted: {', '.join(policies())}")


def check_layout(cfg, allowed_gran=GRANULARITIES) -> None:
    """Group size, granularity and scale dtype of a config (a group size implies granularity group)."""
    if cfg.group is not None:
        if not isinstance(cfg.group, int) or cfg.group < 1:
            raise BitladderError(f"group must be a positive integer, got {cfg.group!r}")
        object.__setattr__(cfg, "granularity", "group")
    if cfg.granularity not in allowed_gran:
        raise BitladderError(f"granularity must be one of {allowed_gran}, got {cfg.granularity!r}")
    if cfg.granularity == "group" and cfg.group is None:
        raise BitladderError("granularity='group' needs group=<size>, e.g. group=64")
    if cfg.scale_dtype not in SCALE_DTYPES:
        raise BitladderError(f"scale_dtype must be one of {tuple(SCALE_DTYPES)}, got {cfg.scale_dtype!r}")


class ConfigBase:
    """Base of the format configs: a version, a scale layout, a dict form, and the rung hooks."""

    version: ClassVar[int] = 1
    rung_options: ClassVar[tuple[str, ...]] = ()  # rung parts beyond the base and scale layout: sym, method, ...

    @classmethod
    def takes(cls, qtype: QType) -> bool:
        """Whether a rung may name this format as its base."""
        return True

    @classmethod
    def from_rung(cls, qtype: QType, **kw) -> "ConfigBase":
        """The config for a rung whose base is ``qtype`` (``kw``: layout and the options it allows)."""
        return cls(**kw)

    @property
    def needs_calibration(self) -> bool:
        """Whether its method or activation quantisation needs calibration batches."""
        return any(getattr(getattr(self, k, None), "needs_data", False) for k in ("method", "act", "tune"))

    def layout(self, axis: int = 0) -> Layout:
        """The scale layout for a weight whose output channels lie on ``axis``."""
        return Layout(self.granularity, axis, self.group)

    def to_dict(self) -> dict:
        """The config as JSON-ready data, with its type and version (``config_from_dict`` reads it back)."""
        d = {"type": type(self).__name__, "version": self.version, **asdict(self)}
        for key in ("method", "act", "tune"):
            if isinstance(getattr(self, key, None), _Method):
                d[key] = getattr(self, key).to_dict()
        return d
