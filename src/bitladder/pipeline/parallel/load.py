"""One pipeline stage from an artifact, reading only that stage's tensors.

The float architecture is built on the ``meta`` device (shapes, no memory), the units are balanced over the
stages by their stored bytes (:mod:`~bitladder.pipeline.parallel.split`), and the stage opens the
safetensors file and reads its own tensors by name, one unit at a time (the file's pages it touched are
released after each unit). Everything another stage owns stays on ``meta`` and is dropped with the model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from bitladder.errors import BitladderError
from bitladder.io.artifact import read_header, rebuild_layer
from bitladder.pipeline.parallel.blocks import SplitterRegistry
from bitladder.pipeline.parallel.split import balance, owned, unit_bytes
from bitladder.pipeline.parallel.splitters import default_registry


@dataclass(frozen=True)
class StagePlan:
    """Stage ``index`` of ``count``: units ``start:stop`` of ``units``, holding ``nbytes`` stored bytes."""
    index: int
    count: int
    start: int
    stop: int
    units: int
    nbytes: int


def _meta_model(meta: dict, factory: Callable[[], nn.Module] | None) -> nn.Module:
    from bitladder.zoo.registry import build_builtin

    if meta.get("structure"):
        raise BitladderError("pipeline stages load artifacts of the float architecture; this one was reshaped "
                             "(pruning, factorisation or rotation), which pipelining does not support yet")
    try:
        with torch.device("meta"):  # shapes only: no stage allocates the layers it does not own
            return factory() if factory else build_builtin(meta.get("source"))
    except BitladderError:
        raise
    except Exception as e:  # noqa: BLE001 - a user factory that cannot be built on the meta device
        raise BitladderError(f"the model's factory cannot build it on the meta device for pipelining: "
                             f"{type(e).__name__}: {e}") from None


def plan(path: str | os.PathLike, stages: int, factory: Callable[[], nn.Module] | None = None,
         registry: SplitterRegistry | None = None) -> list[StagePlan]:
    """How ``stages`` stages split the artifact's model (reads the header only)."""
    meta, info = read_header(path)
    model = _meta_model(meta, factory)
    _, _, units, ranges, sizes = _cut(model, info, stages, registry)
    return [StagePlan(i, stages, a, b, len(units), sum(sizes[a:b])) for i, (a, b) in enumerate(ranges)]


def _cut(model: nn.Module, info: dict, stages: int, registry: SplitterRegistry | None):
    prefix, inner, splitter = (registry or default_registry()).find(model)
    units = [[prefix + p for p in u] for u in splitter.units(inner)]
    sizes = unit_bytes({k: v["nbytes"] for k, v in info.items()}, units)
    return inner, splitter, units, balance(sizes, stages), sizes


def _swap_quantised(model: nn.Module, layers: dict, tensors: dict[str, torch.Tensor], prefixes: list[str]) -> None:
    """Replace this unit's float layers that the artifact stores quantised by their handlers' skeletons."""
    for name in owned(list(layers), prefixes):
        lm = layers[name]
        new = rebuild_layer(name, model.get_submodule(name), lm, tensors)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new)


def load_stage(path: str | os.PathLike, index: int, stages: int, factory: Callable[[], nn.Module] | None = None,
               registry: SplitterRegistry | None = None) -> tuple[nn.Module, StagePlan]:
    """(module running stage ``index`` of ``stages``, its plan), built from the artifact at ``path`` with only
    this stage's tensors read. ``factory`` builds the float architecture (built-in sources need none)."""
    meta, info = read_header(path)
    model = _meta_model(meta, factory)
    inner, splitter, units, ranges, sizes = _cut(model, info, stages, registry)
    start, stop = ranges[index]
    for prefixes in units[start:stop]:
        try:
            with safe_open(str(path), framework="pt") as f:  # per unit: at most one unit's file pages mapped
                tensors = {k: f.get_tensor(k) for k in owned(list(info), prefixes)}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on a damaged file
            raise BitladderError(f"{path} is corrupt: {e}") from None
        _swap_quantised(model, meta["layers"], tensors, prefixes)
        try:
            bad = model.load_state_dict(tensors, strict=False, assign=True)
        except RuntimeError as e:  # shapes that differ from the factory's model
            lines = str(e).strip().splitlines()
            raise BitladderError(f"artifact does not match the model: {' '.join(lines[:3])[:400]}") from None
        missing = owned(bad.missing_keys, prefixes)
        if bad.unexpected_keys or missing:
            raise BitladderError(f"artifact does not match the model: stage {index} lacks {missing[:3]}, "
                                 f"and has unexpected {bad.unexpected_keys[:3]}")
    stage = splitter.stage(inner, start, stop)
    left = [n for n, t in [*stage.named_parameters(), *stage.named_buffers()] if t.is_meta]
    if left:  # a splitter that reaches outside its units, or a buffer no artifact stores
        raise BitladderError(f"stage {index} of {Path(path).name} has no stored values for {left[:3]}")
    return stage.eval(), StagePlan(index, stages, start, stop, len(units), sum(sizes[start:stop]))
