"""The distributed-mode registry: names, what each needs, and one process training the student itself."""

import logging

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder.methods.train import ddp, fsdp, modes  # noqa: F401 (importing registers ddp and fsdp)
from bitladder.methods.train.trainer import Train, fit


def test_registry_names_and_unknown_mode():
    assert {"ddp", "fsdp"} <= set(modes.MODES)
    assert modes.get("fsdp").shards and not modes.get("ddp").shards
    assert "torchrun" in modes.get("fsdp").needs
    with pytest.raises(BitladderError, match="unknown distributed mode 'zero'; accepted: ddp, fsdp"):
        modes.get("zero")
    with pytest.raises(BitladderError, match="unknown distributed mode 'zero'"):
        Train(distributed="zero")
    with pytest.raises(BitladderError, match="timeout must be > 0 seconds, got 0"):
        Train(timeout=0)


def test_one_process_trains_the_student_itself_and_says_so_for_fsdp(caplog):
    m = torch.nn.Linear(4, 3)
    with caplog.at_level(logging.WARNING, logger="bitladder"):
        r = modes.start("fsdp", m, ddp.World(), None)
    assert type(r) is modes.Runner and r.model is m and r.module is m
    assert "needs more than one process" in caplog.text and "training unsharded" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bitladder"):
        assert modes.start("ddp", m, ddp.World(), None).model is m
    assert not caplog.text
    torch.manual_seed(0)
    x, y = [torch.randn(16, 4)], [torch.randint(0, 3, (16,))]
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    fit(a, x, y, Train(epochs=3), metric="accuracy")
    fit(b, x, y, Train(epochs=3, distributed="fsdp"), metric="accuracy")
    assert torch.equal(a.weight, b.weight)  # the mode is how a run goes, not what it computes
    assert Train(distributed="fsdp").settings() == Train().settings()
