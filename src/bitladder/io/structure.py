"""The shape of a model that pruning or factorisation changed, recorded as data so that loading an
artifact can rebuild it from the model's factory: no pickled code, only constructor arguments.

``describe(model, reference)`` lists each top-most module whose type or parameter shapes differ from
the factory's ``reference``; ``rebuild(reference, records)`` swaps those modules in. Supported:
plain torch layers (Linear, Conv1d/2d, BatchNorm1d/2d, LayerNorm, Embedding) and every structural module
registered in :mod:`bitladder.nn.structures`; anything else that differs is named in the error.

>>> from torch import nn
>>> ref = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> small = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
>>> recs = describe(small, ref)
>>> [r["name"] for r in recs], rebuild(ref, recs)[0].out_features
(['0', '2'], 6)
"""

from __future__ import annotations

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.io.meta_check import BIG, check_record
from bitladder.nn.base import QuantModule
from bitladder.nn.structures import build_module, is_structure, module_record


def _shapes(m: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def describe(model: nn.Module, reference: nn.Module) -> list[dict]:
    """Records of the top-most modules of ``model`` that differ from ``reference`` (same names)."""
    ref = dict(reference.named_modules())
    out: list[dict] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(r["name"] + ".") for r in out):
            continue
        other = ref.get(name)
        if isinstance(m, QuantModule) and tuple(m.qmeta["shape"]) == tuple(getattr(other, "weight", m).shape):
            continue  # quantised in place, same shape: the artifact's own metadata rebuilds it
        own = {k: v for k, v in _shapes(m).items() if "." not in k}
        theirs = {} if other is None else {k: v for k, v in _shapes(other).items() if "." not in k}
        if other is not None and type(other) is type(m) and own == theirs:
            continue
        kind, args = module_record(m)
        out.append({"name": name, "type": kind, "args": args})
    return out


def with_structures(model: nn.Module, records: list[dict]) -> list[dict]:
    """``records`` completed with every structural module of ``model`` (a rotation added by ``quantize``)
    that no record of it or of an ancestor describes; a plain record at the same name is replaced."""
    out = {r["name"]: r for r in records}
    for name, m in model.named_modules():
        if not name or not is_structure(m) or any(name.startswith(n + ".") for n in out):
            continue
        kind, args = module_record(m)
        if name not in out or out[name]["type"] != kind:
            out[name] = {"name": name, "type": kind, "args": args}
    return list(out.values())


DERIVED_MAX = 2**28  # numbers a rebuilt module may compute beyond the stored ones (1 GiB in fp32)


def _build(name: str, kind: str, args: dict) -> nn.Module:
    try:
        return build_module(kind, args)
    except (TypeError, ValueError, KeyError, AssertionError) as e:  # a constructor's own checks (torch asserts)
        raise BitladderError(f"artifact structure for {name!r} is invalid: {type(e).__name__}: {e}") from None


_GEOMETRY = ("stride", "padding", "dilation", "padding_mode")


def _check_geometry(name: str, old: nn.Module | None, args: dict) -> None:
    """Pruning and factorisation keep a layer's geometry, which no stored tensor's shape shows: a record that
    changes it would load and then fail at the first forward."""
    for key in _GEOMETRY:
        if key in args and hasattr(old, key):
            was = getattr(old, key)
            was = list(was) if isinstance(was, tuple) else was
            if args[key] != was:
                raise BitladderError(f"artifact structure for {name!r} gives {key} {args[key]!r}, the model's layer "
                                     f"has {was!r} (pruning and factorisation keep it)")
    inner = args.get("inner")
    if isinstance(inner, dict) and isinstance(inner.get("args"), dict):
        _check_geometry(name, old, inner["args"])


def rebuild(model: nn.Module, records: list[dict], max_numel: int = BIG) -> nn.Module:
    """Swap in the recorded modules (fresh weights: the artifact's tensors are loaded after this). A record
    whose module would hold more than ``max_numel`` numbers is refused before any memory is taken."""
    for r in records:
        check_record(r)
        name = r["name"]
        parent, _, child = name.rpartition(".")
        try:
            owner = model.get_submodule(parent) if parent else model
        except AttributeError:
            raise BitladderError(f"artifact structure names {name!r}, which the model does not have") from None
        _check_geometry(name, getattr(owner, child, None), r["args"])
        with torch.device("meta"):  # sizes first, on no memory: a damaged record may ask for terabytes
            shell = _build(name, r["type"], r["args"])
        stored = sum(t.numel() for t in shell.state_dict().values())
        derived = sum(t.numel() for t in (*shell.parameters(), *shell.buffers())) - stored  # e.g. a Hadamard matrix
        if stored > max_numel or derived > DERIVED_MAX:
            raise BitladderError(f"artifact structure for {name!r} describes a module of {stored:,} stored and "
                                 f"{derived:,} derived numbers; the file holds at most {max_numel:,} (and "
                                 f"{DERIVED_MAX:,} derived)")
        setattr(owner, child, _build(name, r["type"], r["args"]))
    return model
