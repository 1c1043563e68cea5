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


def test_hint_loss_pulls_intermediate_layers_towards_the_teacher():
    from bitladder.methods.train.distill import Hints, hint_loss

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    xs = [torch.randn(16, 4) for _ in range(4)]

    def gap(student):
        hs, ht = Hints(student, ("0",)), Hints(teacher, ("0",))
        with torch.no_grad():
            student(xs[0]), teacher(xs[0])
        hs.close(), ht.close()
        return float(hint_loss(hs.out, ht.out))

    plain, hinted = (nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)) for _ in range(2))
    hinted.load_state_dict(plain.state_dict())
    fit(plain, xs, None, Train(epochs=20, lr=1e-2), teacher=teacher)
    fit(hinted, xs, None, Train(epochs=20, lr=1e-2, hint=1.0, hint_layers=["0"]), teacher=teacher)
    assert gap(hinted) < 0.5 * gap(plain)
    assert not hinted[0]._forward_hooks and not teacher[0]._forward_hooks  # hooks removed after training


def test_hint_settings_and_errors():
    assert "hint" not in Train().to_dict()  # the default keeps the settings of older checkpoints
    assert Train(hint=0.5, hint_layers=["a.*"]).settings()["hint_layers"] == ["a.*"]
    xs, _ = _data()
    with pytest.raises(BitladderError, match="hint must be >= 0"):
        Train(hint=-1.0)
    with pytest.raises(BitladderError, match="hint > 0 needs hint_layers"):
        Train(hint=1.0)
    with pytest.raises(BitladderError, match="hint > 0 needs a teacher"):
        fit(nn.Linear(4, 3), xs, _data()[1], Train(epochs=1, hint=1.0, hint_layers=["*"]))
    with pytest.raises(BitladderError, match=r"hint_layers \['nope'\] match no module of Linear"):
        fit(nn.Linear(4, 3), xs, None, Train(epochs=1, hint=1.0, hint_layers=["nope"]), teacher=nn.Linear(4, 3))
