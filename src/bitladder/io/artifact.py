"""Artifacts: one safetensors file, tensors + JSON metadata. Never pickle.

Metadata key ``bitladder`` holds JSON: ``format_version``, ``source`` (how to rebuild the float
model: a built-in name), ``config`` (the quantisation config), and ``layers``: for each quantised
layer its handler, float module type, format, shape and layout. Writes go to a temporary file in
the same folder and are renamed into place, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.io.meta_check import check_meta
from bitladder.io.structure import with_structures
from bitladder.nn.base import QuantModule
from bitladder.nn.registry import HANDLERS, HandlerRegistry

FORMAT_VERSION = 1
_PICKLE_MAGICS = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save zip container


def save(model: nn.Module, path: str | os.PathLike, source: str | None = None, config: dict | None = None,
         structure: list[dict] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically; returns the path. ``structure``: modules that pruning or
    factorisation reshaped (:func:`bitladder.io.structure.describe`), rebuilt before loading."""
    path = Path(path)
    layers = {name: {"handler": type(m).__name__, **m.qmeta}
              for name, m in model.named_modules() if isinstance(m, QuantModule)}
    meta = {"format_version": FORMAT_VERSION, "source": source, "config": config, "layers": layers}
    structure = with_structures(model, structure or [])  # rotations and shortcuts record themselves
    if structure:
        meta["structure"] = structure
    seen: dict[int, str] = {}
    tensors = {}
    for k, t in model.state_dict().items():
        tensors[k] = t.detach().contiguous().clone() if t.data_ptr() in seen else t.detach().contiguous()
        seen[t.data_ptr()] = k
    if not path.parent.exists():
        raise BitladderError(f"output folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"bitladder": json.dumps(meta, sort_keys=True)})
    return path


def read_header(path: str | os.PathLike) -> tuple[dict, dict]:
    """(bitladder metadata, {tensor name: {dtype, shape, nbytes}}) after validating the file."""
    path = Path(path)
    if not path.is_file():
        raise BitladderError(f"artifact {path} does not exist or is not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else -1
        if not (len(head) == 9 and head[8:9] == b"{" and 0 < n <= size - 8):
            if head.startswith(_PICKLE_MAGICS[1]) or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
                raise BitladderError(f"{path} is a pickle / torch.save file; bitladder loads only safetensors "
                                     "artifacts (pickles can execute code when loaded)")
            raise BitladderError(f"{path} is truncated or not a safetensors artifact ({size} bytes, no valid "
                                 "safetensors header)")
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BitladderError(f"{path} is corrupt: its safetensors header is not valid JSON") from None
    info = {}
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            lo, hi = v["data_offsets"]
            info[k] = {"dtype": v["dtype"], "shape": v["shape"], "nbytes": hi - lo}
            end = max(end, hi)
        except (KeyError, TypeError, ValueError):
            raise BitladderError(f"{path} is corrupt: bad header entry for {k!r}") from None
    if 8 + n + end != size:
        raise BitladderError(f"{path} is truncated or corrupt: tensors need {8 + n + end} bytes, file has {size}")
    extra = header.get("__metadata__") or {}
    raw = extra.get("bitladder") if isinstance(extra, dict) else None
    if raw is None:
        raise BitladderError(f"{path} is a safetensors file but not a bitladder artifact (no 'bitladder' metadata)")
    try:
        meta = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise BitladderError(f"{path} is corrupt: its bitladder metadata is not valid JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), dict):
        raise BitladderError(f"{path} is corrupt: its bitladder metadata is not an object with a 'layers' table")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BitladderError(f"{path}: artifact format version {meta.get('format_version')!r} is not supported "
                             f"(this build reads {FORMAT_VERSION})")
    try:
        check_meta(meta)
    except BitladderError as e:
        raise BitladderError(f"{path} is corrupt: {e}") from None
    return meta, info


def rebuild_layer(name: str, module: nn.Module, lm: dict, tensors: dict[str, torch.Tensor],
                  handlers: HandlerRegistry = HANDLERS) -> nn.Module:
    """The quantised layer the artifact records at ``name`` (metadata ``lm``, stored ``tensors``), built by
    its handler in place of the model's ``module``; a one-line error where the two do not match."""
    handler = handlers.lookup(module)
    if handler is None or handler.__name__ != lm["handler"]:
        raise BitladderError(f"artifact layer {name!r} was {lm['handler']}, the model has "
                             f"{type(module).__name__} there")
    w = None if isinstance(module, QuantModule) else getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and tuple(w.shape) != tuple(lm["shape"]):  # same bytes, other geometry
        raise BitladderError(f"artifact layer {name!r} does not match the model: shape {lm['shape']} in the "
                             f"artifact, {list(w.shape)} in the model")
    prefix = f"{name}." if name else ""
    parts = {p: tensors[f"{prefix}weight_{p}"] for p in ("packed", "scale", "zero_point", "table", "mask")
             if f"{prefix}weight_{p}" in tensors}
    try:
        return handler.skeleton(module, lm, parts)
    except (ValueError, KeyError) as e:
        raise BitladderError(f"artifact layer {name!r} is inconsistent: {e}") from None


def load(path: str | os.PathLike, model: nn.Module | None = None,
         handlers: HandlerRegistry = HANDLERS, builder: Callable[[str | None], nn.Module] | None = None) -> nn.Module:
    """Load an artifact into ``model`` (the float architecture), or into ``builder(source)`` for the source
    the artifact records (``bitladder.load`` passes the built-in models' builder).

    Like ``load_state_dict``, a given ``model`` is modified in place (its layers are swapped) and
    returned; pass a fresh instance to keep the original.

    The float model's layers named in the metadata are replaced by their quantised handlers, then
    every tensor is loaded strictly: a missing, extra or mis-shaped tensor is an error.
    """
    meta, _ = read_header(path)
    if model is None:
        if builder is None:
            raise BitladderError(f"artifact {Path(path).name} needs its float model: pass model=... (or use "
                                 "bitladder.load, which rebuilds the built-in models)")
        model = builder(meta.get("source"))
    if meta.get("structure"):
        from bitladder.io.structure import rebuild

        model = rebuild(model, meta["structure"], max_numel=8 * Path(path).stat().st_size)  # >= 1 bit a number
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise BitladderError(f"{path} is corrupt: {e}") from None
    for name, lm in meta["layers"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise BitladderError(f"artifact layer {name!r} does not exist in the given model") from None
        new = rebuild_layer(name, module, lm, tensors, handlers)
        if not name:  # the model is itself one quantised layer
            model = new
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    # a model built without weights (parameters on meta) takes the stored tensors themselves
    assign = any(p.is_meta for p in model.parameters())
    try:
        model.load_state_dict(tensors, strict=True, assign=assign)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise BitladderError(f"artifact does not match the model: {' '.join(first[:3])[:400]}") from None
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor no artifact stores (the builder left it unbuilt)
        raise BitladderError(f"{Path(path).name} holds no values for {left[:3]} and the model was built without them")
    return model.eval()
