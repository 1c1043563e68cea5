"""The evaluation step of ``compress`` / ``ladder`` in pipeline stages: every torchrun process runs one stage of
the artifact just written, and rank 0, which measured the reloaded model in one process, gets the staged
outputs to score and to compare with its own.

Rank 0 writes the artifact; every rank then meets at a barrier (bounded by the group's timeout) and runs
:func:`~bitladder.pipeline.parallel.evaluate.evaluate_pipelined`. The last stage sends its outputs to rank 0
as one tensor (shapes agreed in advance, no pickles between processes).
"""

from __future__ import annotations

import os

import torch

from bitladder.errors import BitladderError
from bitladder.pipeline.measure.evaluate import fidelity
from bitladder.pipeline.parallel.evaluate import Pipeline, evaluate_pipelined
from bitladder.pipeline.parallel.splitters import default_registry
from bitladder.pipeline.parallel.world import open_world
from bitladder.zoo.spec import ModelSpec


def start(cfg: Pipeline, model: torch.nn.Module, reshaping: list[str]):
    """This process's place among the stages. What cannot be staged fails now, before any work: a launch that
    does not fit, a model no splitter cuts, or steps that reshape it (``reshaping``: their names)."""
    default_registry().find(model)
    if reshaping:
        raise BitladderError(f"pipeline stages load the float architecture; {', '.join(reshaping)} reshapes the "
                             "model, which pipelining does not support yet")
    return open_world(cfg.stages, cfg.timeout_s)


def staged(artifact: str | os.PathLike, spec: ModelSpec, cfg: Pipeline, ref: torch.Tensor | None,
           local: torch.Tensor | None) -> dict | None:
    """On every rank, after rank 0 wrote ``artifact``: the staged run over ``spec.eval_batches``. Rank 0
    (which passes ``ref``, fp32's outputs, and ``local``, its one-process outputs of the reloaded artifact;
    the other ranks pass None for both) gets ``{"stages", "microbatches", "fidelity", "max_abs_diff",
    "max_abs_output", "stage_rows"}`` and the metric's own keys; others None. Micro-batches change GEMM
    shapes, so float rounding; with one micro-batch the staged outputs equal one process's bit for bit."""
    import torch.distributed as dist

    w = open_world(cfg.stages, cfg.timeout_s)
    if w.size > 1:
        dist.barrier()  # rank 0 has written the artifact
    result = evaluate_pipelined(artifact, spec.eval_batches, cfg, factory=spec.fresh_model)
    outs = result.outputs
    if w.size > 1 and (w.main or result.last):
        if result.last:
            dist.send(outs.contiguous(), 0)
        else:
            if local is None:
                raise BitladderError("rank 0 of a staged evaluation needs its own outputs to compare")
            outs = torch.empty_like(local)
            dist.recv(outs, w.size - 1)
    if not w.main:
        return None
    if local is not None and outs.shape != local.shape:
        raise BitladderError(f"the staged outputs have shape {tuple(outs.shape)}, one process gave "
                             f"{tuple(local.shape)}; please report this")
    fid = fidelity(spec, outs, ref)
    return {"stages": cfg.stages, "microbatches": cfg.microbatches, **fid,
            "max_abs_diff": None if local is None else float((outs - local).abs().max()),
            "max_abs_output": None if local is None else float(local.abs().max()),
            "stage_rows": result.stages}
