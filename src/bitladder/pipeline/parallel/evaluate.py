"""Pipeline-parallel evaluation: each process runs one stage of an artifact's model, the batches flow
through the stages in micro-batches (``ScheduleGPipe``), and the last stage holds the outputs.

Stages are modules built by hand from the model's own layers (:mod:`~bitladder.pipeline.parallel.load`),
not traced with ``torch.export``: the quantised layers' kernels and transformers' mask code do not
export, and a stage built by hand can load only its own tensors.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.train import ddp
from bitladder.pipeline.parallel.load import StagePlan, load_stage
from bitladder.pipeline.parallel.world import device, open_world


@dataclass(frozen=True)
class Pipeline:
    """``stages`` processes, each batch cut into ``microbatches`` (fewer when a batch has fewer rows),
    ``timeout_s`` on every send, receive and barrier.

    >>> Pipeline(stages=2).microbatches
    4
    """
    stages: int
    microbatches: int = 4
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.microbatches < 1:
            raise BitladderError(f"micro-batches must be at least 1, got {self.microbatches}")


@dataclass
class StageResult:
    """What one rank did: its ``plan``, ``outputs`` (the last stage only, else None), its peak RSS (MB), and
    ``stages``: every rank's ``{"rank", "units": [start, stop], "bytes", "peak_rss_mb"}``, in stage order."""
    rank: int
    plan: StagePlan
    outputs: torch.Tensor | None
    peak_rss_mb: float
    stages: list[dict]

    @property
    def last(self) -> bool:
        """Whether this rank ran the last stage (and so holds the outputs)."""
        return self.plan.index == self.plan.count - 1


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _row(rank: int, plan: StagePlan) -> dict:
    return {"rank": rank, "units": [plan.start, plan.stop], "bytes": plan.nbytes,
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def _gather(row: dict, size: int) -> list[dict]:
    """Every rank's row, as numbers in a tensor (no pickles between processes)."""
    import torch.distributed as dist

    mine = torch.tensor([row["rank"], *row["units"], row["bytes"], row["peak_rss_mb"]], dtype=torch.float64)
    parts = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(parts, mine)
    return [{"rank": int(t[0]), "units": [int(t[1]), int(t[2])], "bytes": int(t[3]), "peak_rss_mb": float(t[4])}
            for t in parts]


def _shape(batches: list[torch.Tensor]) -> tuple[int, ...]:
    """The rows-free shape all batches share (a stage's buffers are sized once, at the first micro-batch)."""
    if not all(isinstance(b, torch.Tensor) for b in batches):
        raise BitladderError("pipeline evaluation takes batches that are tensors (token ids or features)")
    shapes = {tuple(b.shape[1:]) for b in batches}
    if len(shapes) != 1:
        raise BitladderError(f"pipeline evaluation needs batches of one shape apart from their rows, got "
                             f"{sorted(shapes)[:3]}")
    return shapes.pop()


def _pad(batch: torch.Tensor, rows: int) -> torch.Tensor:
    """``batch`` with its last row repeated up to ``rows`` rows (rows are independent at evaluation)."""
    extra = rows - batch.shape[0]
    return torch.cat([batch, batch[-1:].expand(extra, *batch.shape[1:])]) if extra else batch


def _run(stage: nn.Module, w: ddp.World, cfg: Pipeline, batches: list[torch.Tensor]) -> torch.Tensor | None:
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    dev = device()
    stage.to(dev)
    _shape(batches)
    most = max(b.shape[0] for b in batches)
    chunks = min(cfg.microbatches, most)
    rows = -(-most // chunks) * chunks  # every micro-batch of every batch has the same shape
    schedule = ScheduleGPipe(PipelineStage(stage, w.rank, w.size, dev), chunks)
    outs = []
    with torch.no_grad():
        for b in batches:
            out = schedule.eval(_pad(b, rows).to(dev)) if w.rank == 0 else schedule.eval()
            if w.rank == w.size - 1:
                outs.append(out[: b.shape[0]].float().cpu())
    return torch.cat(outs) if outs else None


def evaluate_pipelined(artifact: str | os.PathLike, batches: list[torch.Tensor], cfg: Pipeline,
                       factory: Callable[[], nn.Module] | None = None) -> StageResult:
    """Run the artifact's model over ``batches`` split into ``cfg.stages`` stages, one per process.

    Every rank calls this with the same batches (the first stage feeds them, the others use their count
    and sizes). In one process (``stages=1``) the whole model runs as one stage, loaded the same way. A
    failure on any rank, a peer's death or a timeout included, raises a BitladderError naming the rank."""
    if not batches:
        raise BitladderError("pipeline evaluation needs at least one batch")
    import torch.distributed as dist

    ours = not (dist.is_available() and dist.is_initialized())  # a group the caller started, it ends
    w = open_world(cfg.stages, cfg.timeout_s)
    stage, plan = load_stage(artifact, w.rank, cfg.stages, factory)
    if w.size == 1:
        with torch.no_grad():
            outputs = torch.cat([stage(b).float() for b in batches])
        return StageResult(0, plan, outputs, peak_rss_mb(), [_row(0, plan)])
    try:
        outputs = _run(stage, w, cfg, batches)
        rows = _gather(_row(w.rank, plan), w.size)
    except BitladderError:
        raise
    except Exception as e:  # noqa: BLE001 - gloo / NCCL raise their own types for a dead or silent peer
        reason = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\] ", "", " ".join(str(e).split()))[:300]  # gloo's source paths
        raise BitladderError(f"rank {w.rank} (stage {plan.index + 1} of {plan.count}) stopped: "
                             f"{type(e).__name__}: {reason}") from None
    if ours:
        ddp.close(w)  # only after success: a barrier with a dead peer would just wait for the timeout again
    return StageResult(w.rank, plan, outputs, peak_rss_mb(), rows)
