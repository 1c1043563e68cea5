"""TensorBoard progress: the event file holds loss/lr per step and the epoch loss; no tensorboard, one clear error."""

import sys

import pytest
import torch

from bitladder import BitladderError
from bitladder.methods.train.trainer import Train, fit


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 4, generator=g) for _ in range(3)], [torch.randint(0, 3, (8,), generator=g) for _ in range(3)]


def test_fit_writes_scalars_that_tensorboard_reads_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    xs, ys = _data()
    losses = []
    fit(torch.nn.Linear(4, 3), xs, ys, Train(epochs=2, lr=1e-2, log_dir=str(tmp_path / "tb")),
        on_epoch=lambda e, loss: losses.append(loss))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/epoch_loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(6))
    assert [e.value for e in acc.Scalars("train/epoch_loss")] == pytest.approx(losses)
    assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-2)


def test_log_dir_without_tensorboard_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    xs, ys = _data()
    with pytest.raises(BitladderError, match=r"log_dir needs the tensorboard package: pip install 'bitladder\[train\]'"):
        fit(torch.nn.Linear(4, 3), xs, ys, Train(epochs=1, log_dir=str(tmp_path / "tb")))
