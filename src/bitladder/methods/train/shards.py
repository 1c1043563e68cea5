"""Whole tensors and this rank's shard of them (FSDP2 keeps parameters and optimiser state as DTensors).

:func:`full` gathers a sharded tensor (a collective: every rank calls it for the same tensor, in the same
order); :func:`local` cuts this rank's shard from a whole tensor without communication (every rank holds
the whole one); :func:`local_bytes` counts what this rank holds. Plain tensors pass through unchanged.

>>> import torch
>>> t = torch.ones(3, 2)
>>> full(t) is t, local(t, t) is t
(True, True)
>>> local_bytes(torch.nn.Linear(2, 3), None)
{'params': 36, 'optim': 0}
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered from every rank if ``t`` is sharded)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` placed as ``like`` is: this rank's shard of it if ``like`` is sharded, else ``value``."""
    if isinstance(like, DTensor):
        # src_data_rank=None: no broadcast, each rank cuts its shard from its own (identical) copy
        return distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)
    return value


def _nbytes(t: torch.Tensor) -> int:
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def local_bytes(module: nn.Module, opt: torch.optim.Optimizer | None) -> dict[str, int]:
    """Bytes of parameters and of optimiser state tensors that this rank holds."""
    params = sum(_nbytes(p) for p in module.parameters())
    state = [] if opt is None else [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return {"params": params, "optim": sum(_nbytes(v) for v in state)}
