"""Training progress as TensorBoard scalars: ``train/loss`` and ``train/lr`` per step, ``train/epoch_loss``
per epoch. TensorBoard is an optional extra (``pip install 'bitladder[train]'``), imported only when a
log folder is given.

>>> log = Progress(None)  # no folder: every call is a no-op
>>> log.step(0, 1.0, 1e-3); log.epoch(0, 1.0); log.close()
"""

from __future__ import annotations

import os

from bitladder.errors import BitladderError


class Progress:
    """Writes to ``log_dir`` when ``write`` (rank 0); the import is checked on every rank."""

    def __init__(self, log_dir: str | os.PathLike | None, write: bool = True) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise BitladderError("log_dir needs the tensorboard package: pip install 'bitladder[train]'") from None
        if write:
            self.writer = SummaryWriter(log_dir=str(log_dir))

    def step(self, step: int, loss: float, lr: float) -> None:
        """Log the step's loss and learning rate (a no-op without a writer)."""
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, epoch: int, loss: float) -> None:
        """Log the epoch's loss (a no-op without a writer)."""
        if self.writer is not None:
            self.writer.add_scalar("train/epoch_loss", loss, epoch)

    def close(self) -> None:
        """Close the writer, if any; later calls are no-ops."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
