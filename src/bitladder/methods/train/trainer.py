"""One trainer for every training step: fine-tuning, QAT and distillation, classifiers and encoders.

The loss follows the model's metric: classifiers use cross-entropy, or soft-target KL at temperature T
(scaled by T^2) mixed with the hard labels when a teacher is given; embedders (metric "cosine") are
distilled with ``1 - cos(student, teacher)`` per row. ``hint > 0`` adds that weight times a hint loss on
the outputs of the modules named by ``hint_layers`` (globs; same names in student and teacher), e.g. every
transformer block's hidden states. Weights that are exactly zero when training starts
(pruned) stay zero. Packed quantised layers are frozen and computed on the dequantised weight so the
gradient reaches the layers before them.

Run options on :class:`Train`: ``log_dir`` writes TensorBoard scalars (loss and lr per step, epoch loss);
``checkpoint`` writes the whole training state after every epoch (safetensors, atomically) and
``resume=True`` continues from it when the file exists (a fresh start otherwise, so the same command
restarts a killed job); the resumed run ends with exactly the weights of an uninterrupted one. Under
``torchrun`` the same call trains in the distributed mode ``distributed`` names: ``ddp``
(DistributedDataParallel, :mod:`.ddp`) or ``fsdp`` (parameters and optimiser state sharded with FSDP2,
:mod:`.fsdp`); both write the same checkpoint, so either resumes the other's. ``timeout`` (seconds) bounds
every collective when ``fit`` starts the process group.

>>> import torch
>>> m = torch.nn.Linear(4, 3)
>>> x, y = [torch.randn(32, 4)], [torch.randint(0, 3, (32,))]
>>> fit(m, x, y, Train(epochs=2), metric="accuracy") is m
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.methods.train import checkpoint as ckpt
from bitladder.methods.train import ddp, fsdp, modes, shards
from bitladder.methods.train.distill import Hints, distill_loss, hint_loss
from bitladder.methods.train.progress import Progress
from bitladder.nn.select import run

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
RUN_FIELDS = ("log_dir", "checkpoint", "resume", "distributed", "timeout")  # how a run goes, not what it computes
assert fsdp.FSDPRunner  # imported to register mode 'fsdp' (ddp registers 'ddp')


@dataclass(frozen=True)
class Train:
    """Epochs over the given batches, optimiser, learning rate, schedule, seed, distillation knobs; where
    to log (TensorBoard folder), checkpoint, whether to resume; the distributed mode under torchrun and its
    collective timeout in seconds."""

    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adamw"
    schedule: str = "cosine"
    weight_decay: float = 0.0
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft (teacher) loss against the hard labels
    seed: int = 0
    hint: float = 0.0  # weight of the hidden-state hint loss (0: none)
    hint_layers: tuple[str, ...] = ()
    log_dir: str | None = None
    checkpoint: str | None = None
    resume: bool = False
    distributed: str = "ddp"
    timeout: float = ddp.TIMEOUT_S
    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise BitladderError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise BitladderError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise BitladderError(f"unknown optimizer {self.optimizer!r}; accepted: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise BitladderError(f"unknown schedule {self.schedule!r}; accepted: {', '.join(SCHEDULES)}")
        if self.temperature <= 0:
            raise BitladderError(f"temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise BitladderError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.hint >= 0:
            raise BitladderError(f"hint must be >= 0, got {self.hint}")
        object.__setattr__(self, "hint_layers", tuple(self.hint_layers))
        if self.hint > 0 and not self.hint_layers:
            raise BitladderError("hint > 0 needs hint_layers (globs naming the modules to match)")
        for name in ("log_dir", "checkpoint"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str | os.PathLike) or not str(value):
                    raise BitladderError(f"{name} must be a path, got {value!r}")
                object.__setattr__(self, name, str(value))
        modes.get(self.distributed)
        if not (isinstance(self.timeout, int | float) and self.timeout > 0):
            raise BitladderError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.resume and self.checkpoint is None:
            raise BitladderError("resume=True needs checkpoint=PATH (the file to resume from)")

    def to_dict(self) -> dict:
        """The config as a dict; the hint fields are left out when ``hint`` is 0, so old checkpoints resume."""
        d = {"type": "Train", "version": self.version, **asdict(self), "hint_layers": list(self.hint_layers)}
        if self.hint == 0:  # no hint: the same dict as before the option existed (old checkpoints resume)
            del d["hint"], d["hint_layers"]
        if self.distributed == "ddp" and self.timeout == ddp.TIMEOUT_S:  # likewise for the defaults
            del d["distributed"], d["timeout"]
        return d

    def settings(self) -> dict:
        """What determines the trained weights (a checkpoint must agree on these to be resumed)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_FIELDS}


def loss_for(metric: str, out: torch.Tensor, soft: torch.Tensor | None, target: torch.Tensor | None,
             config: Train) -> torch.Tensor:
    """The training loss: cosine distance to the teacher for embedders, else cross-entropy and/or distillation."""
    if soft is not None and out.shape != soft.shape:
        raise BitladderError(f"student outputs {tuple(out.shape)} do not match the teacher's {tuple(soft.shape)}")
    if metric == "cosine":
        if soft is None:
            raise BitladderError("training an embedder needs a teacher (cosine distillation)")
        return (1 - nn.functional.cosine_similarity(out, soft, dim=-1)).mean()
    if soft is None:
        if target is None:
            raise BitladderError("training a classifier needs labels or a teacher")
        return nn.functional.cross_entropy(out, target)
    return distill_loss(out, soft, target, config.temperature, config.alpha if target is not None else 1.0)


def _zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) and not bool(w.all()):
            masks[name] = w.detach() != 0
    return masks


def _freeze_packed(model: nn.Module) -> None:
    from bitladder.nn.base import QuantModule

    for m in model.modules():
        if isinstance(m, QuantModule):
            m.set_kernel_policy("dequant-fp32")  # autograd flows through x; the packed weight is fixed


def _optimizer(params: list[nn.Parameter], config: Train) -> tuple[torch.optim.Optimizer, Any]:
    opt = (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay) if config.optimizer == "adamw"
           else torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay))
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs) if config.schedule == "cosine"
             else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0))
    return opt, sched


def _collective_failure(e: RuntimeError) -> bool:
    """Whether ``e`` is a collective that timed out or lost its peer (gloo raises plain RuntimeErrors)."""
    import torch.distributed as dist

    return isinstance(e, dist.DistError) or "gloo" in str(e)


def fit(student: nn.Module, batches: list[Any], targets: list[torch.Tensor] | None, config: Train,
        teacher: nn.Module | None = None, metric: str = "accuracy",
        on_epoch: Callable[[int, float], None] | None = None,
        probe: Callable[[nn.Module, torch.optim.Optimizer], None] | None = None) -> nn.Module:
    """Train ``student`` in place on ``batches`` (with ``targets`` for classifiers); returns it in eval mode.

    ``on_epoch(epoch, mean_loss)`` is called after each epoch (on every rank, with the loss over all ranks);
    ``probe(module, optimizer)`` once after the last epoch on every rank, with the module as trained (sharded
    under fsdp) and its optimiser, e.g. to measure what each rank holds.
    """
    if not batches:
        raise BitladderError("no training batches")
    if targets is not None and len(targets) != len(batches):
        raise BitladderError(f"{len(batches)} training batches but {len(targets)} target batches")
    w = ddp.world(config.timeout)
    count = math.ceil(len(batches) / w.size)  # the most batches a rank gets: every rank runs this many steps
    batches = ddp.shard(batches, w)
    targets = None if targets is None else ddp.shard(targets, w)
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    _freeze_packed(student)
    if not any(p.requires_grad for p in student.parameters()):
        raise BitladderError("the model has no trainable parameters (every layer is packed)")
    masks = _zero_masks(student)
    if teacher is not None:
        teacher.eval()
    elif config.hint > 0:
        raise BitladderError("hint > 0 needs a teacher")
    student.train()
    runner = modes.start(config.distributed, student, w, batches[0])
    module = runner.module
    opt, sched = _optimizer([p for p in module.parameters() if p.requires_grad], config)
    masks = {n: shards.local(mk, module.get_submodule(n).weight) for n, mk in masks.items()}
    start = 0
    if config.resume and Path(config.checkpoint).exists():
        start = ckpt.load(config.checkpoint, module, opt, sched, g, config.settings())
    log = Progress(config.log_dir, write=w.main)
    hints: list[Hints] = []
    try:
        if config.hint > 0:  # one at a time, so that hooks already placed are removed if the next fails
            hints.append(Hints(module, config.hint_layers))
            hints.append(Hints(teacher, config.hint_layers))
        for epoch in range(start, config.epochs):
            total = 0.0
            with runner.context():
                order = torch.randperm(len(batches), generator=g).tolist()
                for step, (i, weight) in enumerate(runner.steps(order, count)):
                    out = run(runner.model, batches[i])
                    soft = None
                    if teacher is not None:
                        with torch.no_grad():
                            soft = run(teacher, batches[i])
                    loss = loss_for(metric, out, soft, None if targets is None else targets[i], config)
                    if hints:
                        loss = loss + config.hint * hint_loss(hints[0].out, hints[1].out)
                    opt.zero_grad()
                    (loss if weight == 1.0 else loss * weight).backward()  # weight 0: a padding step (fsdp)
                    runner.before_step()
                    opt.step()
                    if weight:
                        value = float(loss.detach())
                        total += value
                        log.step(epoch * len(batches) + step, value, opt.param_groups[0]["lr"])
                    with torch.no_grad():
                        for n, mk in masks.items():
                            module.get_submodule(n).weight.mul_(mk)
                runner.epoch_end()
            sched.step()
            mean = ddp.mean(total, len(batches), w)
            log.epoch(epoch, mean)
            if config.checkpoint and (w.main or runner.collective_state):
                ckpt.save(config.checkpoint, module, opt, sched, g, epoch + 1, config.settings(), write=w.main)
            if on_epoch:
                on_epoch(epoch, mean)
        if probe:
            probe(module, opt)
        runner.finish(student)
    except RuntimeError as e:
        if w.size > 1 and _collective_failure(e):  # one line naming this rank, not gloo's traceback
            msg = str(e).split("] ", 1)[-1].splitlines()[0]
            raise BitladderError(f"rank {w.rank}: a collective failed, another rank died or stalled (timeout "
                                 f"{config.timeout:g} s): {msg}") from None
        raise
    finally:
        log.close()
        for h in hints:
            h.close()
        # drop the DDP / FSDP wrapper here, also when training stops on an exception: a traceback would keep
        # it alive past the process group's end, and its destructor then aborts the process (SIGABRT)
        runner.close()
        module = opt = None  # noqa: F841
    return student.eval()
