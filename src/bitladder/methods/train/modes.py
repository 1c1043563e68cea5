"""Distributed training modes by name: how the trainer holds the student when more than one process trains.

Each mode is registered with what it needs from the model; the trainer asks :func:`start` for a
:class:`Runner` and calls the same few methods whatever the mode (``ddp`` in :mod:`.ddp`, ``fsdp`` in
:mod:`.fsdp`). In one process every mode trains the student itself (a sharding mode says so in the log).

>>> Runner(None).steps([2, 0, 1], 3)
[(2, 1.0), (0, 1.0), (1, 1.0)]
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from bitladder.errors import BitladderError

# ``World`` below stands for ddp.World (rank, size, main): ddp.py registers its mode here,
# so this file must not import it, even for type checkers (tests/test_architecture.py: no cycles)
World = Any

log = logging.getLogger("bitladder")


class Runner:
    """The student as this process trains it: ``model`` is what the loop calls, ``module`` the module with the
    student's parameter names (hooks, masks, optimiser and checkpoint state); one process: both the student."""

    collective_state = False  # whether every rank must take part when a checkpoint's state is gathered

    def __init__(self, student: nn.Module) -> None:
        self.model = self.module = student

    def context(self) -> contextlib.AbstractContextManager:
        """Entered around each epoch's steps."""
        return contextlib.nullcontext()

    def steps(self, order: list[int], count: int) -> list[tuple[int, float]]:
        """(batch index, loss weight) for each step of an epoch; ``count`` is the most batches any rank has."""
        return [(i, 1.0) for i in order]

    def before_step(self) -> None:
        """After backward, before the optimiser step."""

    def epoch_end(self) -> None:
        """After the last step of an epoch, before its checkpoint."""

    def finish(self, student: nn.Module) -> None:
        """After the last epoch: leave ``student`` holding the trained weights as a plain module."""

    def close(self) -> None:
        """Drop the wrapper (also after an exception)."""
        self.model = self.module = None


@dataclass(frozen=True)
class Mode:
    """A registered mode: its name, what it needs, whether it shards the model, and its runner's constructor."""
    name: str
    needs: str
    shards: bool
    runner: Callable[[nn.Module, World, Any], Runner]


MODES: dict[str, Mode] = {}


def register(name: str, needs: str, shards: bool = False) -> Callable:
    """Class decorator: register a Runner subclass (constructed as ``cls(student, world, first_batch)``)."""
    def add(cls: type[Runner]) -> type[Runner]:
        MODES[name] = Mode(name, needs, shards, cls)
        return cls
    return add


def get(name: str) -> Mode:
    """The mode called ``name``; BitladderError listing the accepted names otherwise."""
    if name not in MODES:
        raise BitladderError(f"unknown distributed mode {name!r}; accepted: {', '.join(MODES)}")
    return MODES[name]


def start(name: str, student: nn.Module, w: World, first_batch: Any) -> Runner:
    """The runner for mode ``name`` in world ``w`` (the student itself in one process)."""
    mode = get(name)
    if w.size == 1:
        if mode.shards:  # asked to shard but alone: train whole here, and say so
            log.warning("distributed mode %r needs more than one process (torchrun --nproc-per-node N); "
                        "training unsharded in this one", name)
        return Runner(student)
    return mode.runner(student, w, first_batch)
