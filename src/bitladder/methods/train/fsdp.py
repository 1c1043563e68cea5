"""Distributed mode ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards the student's parameters,
gradients and optimiser state across the ranks, so each holds about 1/N of them.

Shard units: every entry of an ``nn.ModuleList`` (transformer blocks), then every top-level child with
parameters, then the root for the rest; a unit whose parameters are shared with a module outside it (tied
embeddings) is left to its parent. Zero-dimensional parameters (an activation quantiser's step) cannot
be split; they stay whole on every rank and their gradients are averaged before each step, as DDP would.

What the trainer sees (:class:`FSDPRunner`):

* Lazy thresholds are set on each rank's first batch and then every parameter and buffer is broadcast
  from rank 0 before sharding, as DDP does at start-up; the teacher is never sharded.
* The student itself is not wrapped: a shallow shell (a copy sharing its parameters and buffers) is, and
  the student's own full parameters are released once the shards hold them. After the last epoch the
  trained weights are gathered back into the student on every rank: a plain module, equal across ranks.
  If training stops on an exception the student is left without weights (use a checkpoint to continue).
* Uneven shards: FSDP has no ``join``. A rank with fewer batches pads its epoch with steps on its first
  batch at loss weight 0, so every rank runs ``ceil(batches / N)`` steps; a padded step adds a zero
  gradient to the average over N ranks, which is what DDP's ``join`` does.
* Buffers (BatchNorm statistics) are not sharded; rank 0's are broadcast at every epoch end, so the
  checkpoint (gathered whole on every rank, written by rank 0 in the same format as DDP's) resumes exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.train import ddp, modes, shards


def units(model: nn.Module) -> list[nn.Module]:
    """The modules to shard one by one, innermost first (the root comes last, separately)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    blocks = [c for m in model.modules() if isinstance(m, nn.ModuleList) for c in m]
    tops = [c for c in model.children() if not isinstance(c, nn.ModuleList)]
    chosen = []
    for m in [*blocks, *tops]:
        own = list(m.parameters())
        inside: dict[int, int] = {}
        for _, p in m.named_parameters(remove_duplicate=False):
            inside[id(p)] = inside.get(id(p), 0) + 1
        # tied to a parameter outside this module: FSDP needs both uses in one unit, so leave it to the parent
        if own and all(inside[id(p)] == counts[id(p)] for p in own) and m not in chosen:
            chosen.append(m)
    return chosen


@modes.register("fsdp", shards=True, needs="a model with parameters, run under torchrun with 2+ processes; "
                                           "blocks are called through their forward (nn.ModuleList entries, "
                                           "top-level children)")
class FSDPRunner(modes.Runner):
    """The student's parameters and optimiser state sharded with FSDP2 across the ranks."""

    collective_state = True

    def __init__(self, student: nn.Module, w: ddp.World, first_batch: Any) -> None:
        from torch.distributed.fsdp import fully_shard

        if not any(True for _ in student.parameters()):
            raise BitladderError("distributed mode 'fsdp' needs a model with parameters to shard; this one has "
                                 "none (use mode 'ddp')")
        ddp._prime(student, first_batch)
        with torch.no_grad():  # rank 0's values everywhere, as DDP's start-up broadcast
            for t in [*student.parameters(), *student.buffers()]:
                dist.broadcast(t.data, 0)
        memo = {id(t): t for t in [*student.parameters(), *student.buffers()]}
        shell = copy.deepcopy(student, memo)  # new modules, the same tensors: fully_shard replaces the shell's
        self.whole = [p for p in shell.parameters() if p.dim() == 0]  # FSDP shards dim 0; a scalar has none
        try:
            for m in units(shell):
                fully_shard(m, ignored_params=set(self.whole))
            fully_shard(shell, ignored_params=set(self.whole))
        except (ValueError, AssertionError, NotImplementedError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BitladderError(f"distributed mode 'fsdp' cannot shard this model ({msg}); "
                                 f"mode 'ddp' can train it") from None
        kept = {id(p) for p in self.whole}
        for p in student.parameters():
            if id(p) not in kept:  # the shards hold it now: release the whole copy (refilled by finish)
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self.size = w.size
        self.model = self.module = shell

    def steps(self, order: list[int], count: int) -> list[tuple[int, float]]:
        return [(i, 1.0) for i in order] + [(order[0], 0.0)] * (count - len(order))

    def before_step(self) -> None:
        for p in self.whole:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.size)

    def epoch_end(self) -> None:
        with torch.no_grad():
            for b in self.module.buffers():
                dist.broadcast(b, 0)

    def finish(self, student: nn.Module) -> None:
        mine = dict(student.named_parameters())
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                whole = shards.full(p.detach())  # a collective: every rank, same order
                if mine[name] is not p:  # (a scalar kept whole is the student's own parameter already)
                    mine[name].data = whole
