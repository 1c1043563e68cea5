"""What a user's ``module:function`` may return, turned into a :class:`ModelSpec`.

Accepted: a ``ModelSpec``; a tuple ``(model, inputs)`` (fidelity = output cosine to fp32),
``(model, inputs, targets)`` (accuracy) or ``(model, inputs, targets, calib)`` (``targets`` may be None);
or a dict with the keys ``model``, ``inputs`` and optionally ``targets``, ``calib``. ``inputs`` is a tensor or
a dict of tensors (keywords); ``calib`` is one such batch or a list of them, and enables the calibrated
methods (GPTQ, AWQ, SmoothQuant, static activations). Calibration rows must not repeat evaluation rows:
fidelity is measured on data the method never saw.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.zoo.spec import ModelSpec

KEYS = ("model", "inputs", "targets", "calib")
ACCEPTED = "a ModelSpec, (model, inputs[, targets[, calib]]) or a dict with keys model, inputs[, targets, calib]"
DEFAULT_RUNGS = ["fp32", "fp16", "bf16", "int8", "int4-g32", "ternary", "binary"]


def spec_from(name: str, result: Any) -> ModelSpec:
    """The ModelSpec of a factory's return value; BitladderError naming what is wrong otherwise."""
    if isinstance(result, ModelSpec):
        return result
    if isinstance(result, dict):
        unknown = sorted(set(map(str, result)) - set(KEYS))
        if unknown:
            raise BitladderError(f"factory {name!r} returned a dict with unknown keys {unknown}; accepted: {KEYS}")
        parts = dict(result)
    elif isinstance(result, tuple) and 2 <= len(result) <= 4:
        parts = dict(zip(KEYS, result))
    else:
        raise BitladderError(f"factory {name!r} returned {type(result).__name__}; accepted: {ACCEPTED}")
    model, inputs, targets = parts.get("model"), parts.get("inputs"), parts.get("targets")
    if not isinstance(model, nn.Module):
        raise BitladderError(f"factory {name!r}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not _is_batch(inputs):
        raise BitladderError(f"factory {name!r}: inputs must be a tensor or a dict of tensors")
    if targets is not None and (not isinstance(targets, torch.Tensor) or len(targets) != _rows(inputs)):
        raise BitladderError(f"factory {name!r}: targets must be a tensor with one label per input row "
                             f"({_rows(inputs)})")
    calib = _calib(name, parts.get("calib"))
    _check_disjoint(name, calib, inputs)
    return ModelSpec(name=name, model=model, metric="accuracy" if targets is not None else "cosine",
                     eval_batches=[inputs], latency_batch=inputs, targets=targets, calib_batches=calib,
                     default_rungs=list(DEFAULT_RUNGS))


def _is_batch(x: Any) -> bool:
    return isinstance(x, torch.Tensor) or (isinstance(x, dict) and bool(x)
                                          and all(isinstance(v, torch.Tensor) for v in x.values()))


def _rows(batch: Any) -> int:
    return len(batch) if isinstance(batch, torch.Tensor) else len(next(iter(batch.values())))


def _calib(name: str, calib: Any) -> list:
    if calib is None:
        return []
    batches = calib if isinstance(calib, list | tuple) else [calib]
    if not batches or not all(_is_batch(b) for b in batches):
        raise BitladderError(f"factory {name!r}: calib must be a tensor, a dict of tensors or a non-empty list of "
                             "them")
    return list(batches)


def _check_disjoint(name: str, calib: list, inputs: Any) -> None:
    """Refuse calibration rows that are also evaluation rows (compared exactly, tensors only)."""
    if not isinstance(inputs, torch.Tensor):
        return
    seen = {hash(r.numpy().tobytes()) for r in inputs.detach().reshape(len(inputs), -1).cpu()}
    shared = sum(hash(r.numpy().tobytes()) in seen for b in calib if isinstance(b, torch.Tensor)
                 and b.shape[1:] == inputs.shape[1:] for r in b.detach().reshape(len(b), -1).cpu())
    if shared:
        raise BitladderError(f"factory {name!r}: {shared} calibration rows are also evaluation inputs; fidelity "
                             "must be measured on rows the method never saw: pass disjoint calib rows")
