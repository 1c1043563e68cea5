"""The process group of a pipeline: one process per stage, every collective under a timeout.

torchrun (one machine or many) sets ``WORLD_SIZE`` and the rendezvous; here the group is started with gloo
on CPU or NCCL on GPU (chosen by the device, :data:`BACKENDS`) and a ``timeout``, so a rank whose peer
died or hangs raises after ``timeout_s`` instead of waiting forever. Start and teardown otherwise are
:mod:`bitladder.methods.train.ddp`'s (``world()``, ``close()``).

>>> open_world(1, 60.0)
World(rank=0, size=1)
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch

from bitladder.errors import BitladderError
from bitladder.methods.train import ddp

BACKENDS = {"cpu": "gloo", "cuda": "nccl"}  # device type -> process-group backend
LAUNCH = "torchrun --nproc-per-node {n} --no-python bitladder run ARTIFACT --pipeline {n}"


def device() -> torch.device:
    """This rank's device: its local GPU where there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def open_world(stages: int, timeout_s: float) -> ddp.World:
    """This process's rank among ``stages`` pipeline processes, starting the group (with ``timeout_s`` on
    every collective) when torchrun launched several. One clear error when the launch does not fit."""
    import torch.distributed as dist

    if stages < 1:
        raise BitladderError(f"--pipeline takes a number of stages of at least 1, got {stages}")
    if timeout_s <= 0:
        raise BitladderError(f"the pipeline timeout must be a positive number of seconds, got {timeout_s}")
    started = dist.is_available() and dist.is_initialized()
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = dist.get_world_size() if started else int(raw)
    except ValueError:
        raise BitladderError(f"WORLD_SIZE must be an integer, got {raw!r}") from None
    if size == 1 and stages > 1:
        raise BitladderError(f"--pipeline {stages} runs one stage per process: launch it with "
                             + LAUNCH.format(n=stages))
    if size != stages:
        raise BitladderError(f"--pipeline {stages} needs {stages} processes, but {size} were launched "
                             f"(torchrun --nproc-per-node {stages}, or nodes x processes = {stages})")
    if size > 1 and not started:
        dev = device()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(BACKENDS[dev.type], timeout=timedelta(seconds=timeout_s))
    return ddp.world()
