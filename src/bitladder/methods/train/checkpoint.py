"""Training checkpoints as safetensors, never pickled: the model's state, the optimiser's state tensors and
the RNG states are tensors; everything else (epoch, scheduler, optimiser hyper-parameters, the training
config, a model fingerprint and a SHA-256 of the tensors) is JSON in the safetensors header.

Loading checks, in order: the file parses (else truncated or corrupt), the checksum matches, the
fingerprint (state names and shapes) matches the model, the training config matches; each failure is one
:class:`BitladderError` naming what differs.

A model sharded with FSDP2 (DTensor parameters and optimiser state) is saved whole, in the same format:
every rank calls :func:`save` (the gathers are collectives) and only the one with ``write=True`` keeps the
tensors and writes the file; :func:`load` gives each rank its shard of the whole tensors it reads.

>>> import pathlib, tempfile, torch
>>> m = torch.nn.Linear(2, 2)
>>> opt = torch.optim.SGD(m.parameters(), lr=0.1)
>>> sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
>>> g = torch.Generator().manual_seed(0)
>>> p = save(pathlib.Path(tempfile.mkdtemp()) / "ck.safetensors", m, opt, sched, g, epoch=3, config={"lr": 0.1})
>>> load(p, m, opt, sched, g, config={"lr": 0.1})
3
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from bitladder.atomic import atomic_path
from bitladder.errors import BitladderError
from bitladder.methods.train.shards import full, local

SCHEMA = "bitladder.checkpoint/1"
KEY = "bitladder.checkpoint"


def fingerprint(model: nn.Module) -> dict[str, list[int]]:
    """State names and shapes: what a checkpoint must agree on to be loaded into ``model``."""
    return {k: list(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{list(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _jsonable(value: Any, what: str) -> Any:
    try:
        json.dumps(value)
    except TypeError as e:
        raise BitladderError(f"cannot checkpoint {what}: {e}") from None
    return value


def save(path: str | os.PathLike, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
         generator: torch.Generator, epoch: int, config: dict, write: bool = True) -> Path | None:
    """Write the state after ``epoch`` completed epochs to ``path`` atomically; returns the path. With
    ``write=False`` only take part in gathering a sharded model's state (another rank writes); returns None."""
    tensors: dict[str, torch.Tensor] = {}
    model_extra = {}
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor):
            whole = full(v.detach())  # gathered one tensor at a time; a non-writing rank drops it at once
            if write:
                tensors[f"model/{k}"] = whole.cpu().contiguous().clone()
        else:
            model_extra[k] = _jsonable(v, f"model state {k!r}")
    state = opt.state_dict()
    optim_extra: dict[str, dict] = {}
    for idx, entries in state["state"].items():
        for name, v in entries.items():
            if isinstance(v, torch.Tensor):
                whole = full(v.detach())
                if write:
                    tensors[f"optim/{idx}/{name}"] = whole.cpu().contiguous().clone()
            else:
                optim_extra.setdefault(str(idx), {})[name] = _jsonable(v, f"optimizer state {name!r}")
    if not write:
        return None
    tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    meta = {"schema": SCHEMA, "epoch": epoch, "fingerprint": fingerprint(model), "config": config,
            "model_extra": model_extra, "optim_extra": optim_extra,
            "optim_groups": _jsonable(state["param_groups"], "optimizer settings"),
            "scheduler": _jsonable(sched.state_dict(), "scheduler state"), "sha256": _digest(tensors)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={KEY: json.dumps(meta)})
    return path


def _read(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BitladderError(f"checkpoint {path} is truncated or corrupt ({msg})") from None
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise BitladderError(f"{path} is not a bitladder training checkpoint ({SCHEMA})")
    if meta.get("sha256") != _digest(tensors):
        raise BitladderError(f"checkpoint {path} is corrupt: its tensors do not match the stored checksum")
    return meta, tensors


def _differences(theirs: dict, ours: dict, what: str) -> str:
    out = []
    for k in list(dict.fromkeys([*theirs, *ours])):
        if k not in ours:
            out.append(f"{what} {k!r} only in the checkpoint")
        elif k not in theirs:
            out.append(f"{what} {k!r} only in this run")
        elif theirs[k] != ours[k]:
            out.append(f"{what} {k!r} is {theirs[k]} there, {ours[k]} here")
    more = f" (and {len(out) - 3} more)" if len(out) > 3 else ""
    return "; ".join(out[:3]) + more


def load(path: str | os.PathLike, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
         generator: torch.Generator, config: dict) -> int:
    """Restore the state saved by :func:`save` in place; returns the number of completed epochs."""
    path = Path(path)
    meta, tensors = _read(path)
    if meta["fingerprint"] != fingerprint(model):
        diff = _differences(meta["fingerprint"], fingerprint(model), "state")
        raise BitladderError(f"checkpoint {path} was written for another model: {diff}")
    if meta["config"] != config:
        diff = _differences(meta["config"], config, "setting")
        raise BitladderError(f"checkpoint {path} was written with other training settings: {diff}")
    try:
        ours = model.state_dict()
        model_state: dict[str, Any] = {k[6:]: local(v, ours[k[6:]]) for k, v in tensors.items()
                                       if k.startswith("model/")}
        model_state.update(meta["model_extra"])
        model.load_state_dict(model_state)
        params = [p for g in opt.param_groups for p in g["params"]]
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, idx, name = k.split("/", 2)
                p = params[int(idx)]  # (an index past the end is caught below, as any misfit)
                state.setdefault(int(idx), {})[name] = local(v, p) if v.shape == p.shape else v
        for idx, extra in meta["optim_extra"].items():
            state.setdefault(int(idx), {}).update(extra)
        opt.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})
        sched.load_state_dict(meta["scheduler"])
        generator.set_state(tensors["rng/generator"])
        torch.set_rng_state(tensors["rng/torch"])
    except (KeyError, ValueError, RuntimeError, IndexError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BitladderError(f"checkpoint {path} does not fit this training run ({msg})") from None
    return int(meta["epoch"])
