"""Resolve a model name to a :class:`ModelSpec`: built-ins, or a user's ``module:function``.

A user factory returns a :class:`ModelSpec`, or ``(model, inputs)`` (fidelity = output cosine to
fp32), or ``(model, inputs, targets)`` (fidelity = accuracy).
"""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.zoo.spec import ModelSpec

BUILTINS = ("digits", "minilm")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ACCEPTED = "a built-in name (digits, minilm) or a factory 'package.module:function'"


def _builtin_spec(name: str) -> ModelSpec:
    if name == "digits":
        from bitladder.zoo import digits

        return digits.spec()
    from bitladder.zoo import minilm

    return minilm.spec()


def build_builtin(source: str | None) -> nn.Module:
    """The float model for an artifact's recorded source (built-ins only: never import by metadata)."""
    if source == "digits":
        from bitladder.zoo.digits import DigitsCNN

        return DigitsCNN().eval()
    if source == "minilm":
        from bitladder.zoo.minilm import build

        return build()
    raise BitladderError(f"artifact source {source!r} is not a built-in model; pass the float model "
                         "(Python: load(path, model=...)) to load it")


def resolve(name: str) -> ModelSpec:
    """The ModelSpec of a built-in model name or a ``module:function`` factory; BitladderError otherwise."""
    if name in BUILTINS:
        return _builtin_spec(name)
    if not _FACTORY.match(name):
        raise BitladderError(f"unknown model {name!r}; accepted: {ACCEPTED}")
    mod_name, fn_name = name.split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except Exception as e:  # noqa: BLE001 - the user's module may raise anything at import
        raise BitladderError(f"cannot load factory {name!r}: {type(e).__name__}: {e}") from None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the user's function may raise anything
        raise BitladderError(f"factory {name!r} raised {type(e).__name__}: {e}") from None
    return _from_factory_result(name, fn, result)


def _from_factory_result(name: str, fn, result) -> ModelSpec:
    if isinstance(result, ModelSpec):
        return result
    if isinstance(result, tuple) and 2 <= len(result) <= 3 and isinstance(result[0], nn.Module):
        model, inputs = result[0], result[1]
        targets = result[2] if len(result) == 3 else None
        if not isinstance(inputs, torch.Tensor | dict):
            raise BitladderError(f"factory {name!r}: inputs must be a tensor or a dict of tensors")
        return ModelSpec(name=name, model=model, metric="accuracy" if targets is not None else "cosine",
                         eval_batches=[inputs], latency_batch=inputs, targets=targets,
                         default_rungs=["fp32", "fp16", "bf16", "int8", "int4-g32", "ternary", "binary"])
    raise BitladderError(f"factory {name!r} returned {type(result).__name__}; it must return a ModelSpec, "
                         "(model, inputs) or (model, inputs, targets)")
