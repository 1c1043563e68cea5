"""Multi-process training: the trainer runs unchanged under ``torchrun --nproc-per-node N``.

When ``torch.distributed`` is initialised, or the environment says ``WORLD_SIZE > 1`` (torchrun sets it;
the process group is then started here: gloo on CPU, nccl on GPU), the student is wrapped in
DistributedDataParallel, rank ``r`` trains on ``batches[r::N]`` (uneven shards are handled with DDP's
``join``), gradients are averaged across ranks, and only rank 0 writes checkpoints and logs.
Outside torchrun everything here is a no-op. A script ends with :func:`close` (barrier, then destroy the
process group): a rank that exits while another still talks to it can abort. ``close`` also drops the
references torch itself keeps to the group (``torch.distributed.nn.functional`` takes ``group=group.WORLD``
as a default argument, evaluated when DDP first imports it), so the group's threads end in ``close`` and
not inside interpreter exit, where a gloo thread that needs the GIL aborts the process
(docs/results/gloo-teardown-repro.py).

The group started here has a timeout (``world(timeout=...)``, 600 s by default): a collective that waits
longer for a rank that died or stalled raises on the waiting ranks, torchrun ends the job and names the
failed rank and its error, rather than hanging. This is distributed mode ``ddp`` (:mod:`.modes`).

>>> w = world()
>>> (w.rank, w.size, w.main), shard([1, 2, 3], w)
((0, 1, True), [1, 2, 3])
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.train import modes
from bitladder.nn.select import run

TIMEOUT_S = 600.0  # a collective waits this long for the other ranks before the job ends


@dataclass(frozen=True)
class World:
    """This process's rank and the number of processes; ``main`` is rank 0."""
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process is rank 0."""
        return self.rank == 0


def world(timeout: float = TIMEOUT_S) -> World:
    """This process's rank and the number of processes; starts the process group under torchrun, with
    ``timeout`` seconds for every collective."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise BitladderError(f"WORLD_SIZE must be an integer, got {raw!r}") from None
    if size <= 1:
        return World()
    if not dist.is_available():
        raise BitladderError(f"WORLD_SIZE={size} but this PyTorch build has no torch.distributed")
    if not timeout > 0:
        raise BitladderError(f"the distributed timeout must be > 0 seconds, got {timeout}")
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(seconds=timeout))
    return World(dist.get_rank(), dist.get_world_size())


def shard(items: Sequence[Any], w: World) -> list[Any]:
    """Rank ``r``'s share: ``items[r::size]``."""
    if w.size > 1 and len(items) < w.size:
        raise BitladderError(f"{len(items)} training batches cannot be shared by {w.size} processes")
    return list(items[w.rank :: w.size])


def _prime(model: nn.Module, batch: Any) -> None:
    """Layers that initialise themselves on their first forward (QAT activation thresholds) do so now,
    so that DDP's start-up broadcast gives every rank rank 0's values."""
    from bitladder.methods.train.act_quant import LSQAct
    from bitladder.methods.train.qat import FakeQuantLayer

    pending = [m for m in model.modules() if (isinstance(m, FakeQuantLayer) and m.shift_ready is not None
                                               and not bool(m.shift_ready)) or (isinstance(m, LSQAct) and not bool(m.ready))]
    if pending:
        with torch.no_grad():
            run(model, batch)


def wrap(model: nn.Module, w: World, first_batch: Any) -> nn.Module:
    """The model to call in the training loop: ``model`` itself, or a DDP wrapper around it."""
    if w.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    _prime(model, first_batch)
    # some trainable parameters may take no part in the loss (a binary QAT layer's unused step, a head
    # the loss skips); DDP must be told, or it waits for their gradients forever
    return DistributedDataParallel(model, find_unused_parameters=True)


@modes.register("ddp", needs="any model with trainable parameters; every rank holds the whole student and "
                             "its optimiser state")
class DDPRunner(modes.Runner):
    """The student wrapped in DistributedDataParallel; uneven shards are joined."""

    def __init__(self, student: nn.Module, w: World, first_batch: Any) -> None:
        self.module = student
        self.model = wrap(student, w, first_batch)

    def context(self) -> contextlib.AbstractContextManager:
        return join(self.model)


def join(model: nn.Module) -> contextlib.AbstractContextManager:
    """DDP's context for ranks with different numbers of batches (a null context otherwise)."""
    return model.join() if hasattr(model, "join") and hasattr(model, "module") else contextlib.nullcontext()


def mean(total: float, count: int, w: World) -> float:
    """``total / count`` summed over all ranks."""
    if w.size == 1:
        return total / count
    import torch.distributed as dist

    t = torch.tensor([total, float(count)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t[0] / t[1])


def _unpin(group: Any) -> None:
    """Replace ``group`` by None (the default group at call time) in the default arguments of torch.distributed's
    functions, where an import after ``init_process_group`` froze it."""
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("torch.distributed"):
            continue
        for obj in list(vars(module).values()):
            for f in list(vars(obj).values()) if isinstance(obj, type) else [obj]:
                if isinstance(f, types.FunctionType) and any(d is group for d in f.__defaults__ or ()):
                    f.__defaults__ = tuple(None if d is group else d for d in f.__defaults__)


def close(w: World) -> None:
    """Wait for every rank, then end the process group and its threads (a no-op in one process)."""
    if w.size > 1:
        import torch.distributed as dist

        group = dist.group.WORLD
        dist.barrier()
        dist.destroy_process_group()
        _unpin(group)
        # the last reference: gloo's threads are joined here, while the interpreter can still give them the GIL
        del group
