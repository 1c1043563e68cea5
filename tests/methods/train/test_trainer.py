"""The general trainer: bad input is one clear BitladderError (issue item 8)."""

import pytest
import torch
from torch import nn

from bitladder import BitladderError
from bitladder.methods.train.trainer import Train, fit


def _data(n=2):
    return [torch.randn(8, 4) for _ in range(n)], [torch.randint(0, 3, (8,)) for _ in range(n)]


def test_student_outputs_must_match_the_teacher():
    xs, ys = _data()
    with pytest.raises(BitladderError, match=r"student outputs \(8, 3\) do not match the teacher's \(8, 5\)"):
        fit(nn.Linear(4, 3), xs, ys, Train(epochs=1), teacher=nn.Linear(4, 5))


@pytest.mark.parametrize("t", [0.0, -1.0])
def test_temperature_must_be_positive(t):
    with pytest.raises(BitladderError, match=f"temperature must be > 0, got {t}"):
        Train(temperature=t)


@pytest.mark.parametrize("kwargs,message", [
    ({"resume": True}, r"resume=True needs checkpoint=PATH"),
    ({"checkpoint": ""}, "checkpoint must be a path"),
    ({"log_dir": 3}, "log_dir must be a path, got 3"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"optimizer": "lamb"}, "unknown optimizer 'lamb'; accepted: adamw, sgd"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(BitladderError, match=message):
        Train(**kwargs)


def test_bad_batches():
    xs, ys = _data(2)
    with pytest.raises(BitladderError, match="no training batches"):
        fit(nn.Linear(4, 3), [], None, Train(epochs=1))
    with pytest.raises(BitladderError, match="2 training batches but 1 target batches"):
        fit(nn.Linear(4, 3), xs, ys[:1], Train(epochs=1))
    with pytest.raises(BitladderError, match="needs a teacher"):
        fit(nn.Linear(4, 3), xs, None, Train(epochs=1), metric="cosine")


def test_paths_are_stored_as_strings_and_are_not_training_settings(tmp_path):
    cfg = Train(checkpoint=tmp_path / "ck.safetensors", resume=True, log_dir=tmp_path)
    assert cfg.checkpoint == str(tmp_path / "ck.safetensors")
    assert "checkpoint" in cfg.to_dict() and not {"checkpoint", "log_dir", "resume"} & cfg.settings().keys()
