"""Checkpoint and resume: a resumed run ends bit-identical to an uninterrupted one; bad files are one clear error."""

import copy
import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from bitladder import BitladderError
from bitladder.methods.train.qat import QAT, prepare_qat
from bitladder.methods.train.trainer import Train, fit


class Stop(Exception):
    pass


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(16, 8, generator=g) for _ in range(n)]
    return xs, [torch.randint(0, 3, (16,), generator=g) for _ in range(n)]


def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _stop_after(k):
    def cb(epoch, loss):
        if epoch + 1 == k:
            raise Stop
    return cb


STUDENTS = {
    "mlp-adamw-cosine": (lambda: _mlp(), {"optimizer": "adamw", "schedule": "cosine"}),
    "qat-binary-act-sgd": (lambda: prepare_qat(_mlp(), QAT(bits="binary", binary_act=True, keep_first_last=True)),
                           {"optimizer": "sgd", "schedule": "constant", "lr": 1e-2}),
}


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_resumed_run_ends_with_exactly_the_uninterrupted_weights(tmp_path, name):
    make, opts = STUDENTS[name]
    xs, ys = _data()
    teacher = _mlp().eval()
    initial = make()
    path = tmp_path / "ck.safetensors"
    cfg = Train(epochs=5, seed=7, checkpoint=str(path), resume=True, **opts)

    whole = fit(copy.deepcopy(initial), xs, ys, Train(epochs=5, seed=7, **opts), teacher=teacher)

    with pytest.raises(Stop):  # killed after epoch 2 (its checkpoint is written)
        fit(copy.deepcopy(initial), xs, ys, cfg, teacher=teacher, on_epoch=_stop_after(2))
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["bitladder.checkpoint"])["epoch"] == 2
    seen = []
    resumed = fit(copy.deepcopy(initial), xs, ys, cfg, teacher=teacher, on_epoch=lambda e, _: seen.append(e))
    assert seen == [2, 3, 4]
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_resume_without_a_file_starts_fresh_and_a_finished_run_is_a_no_op(tmp_path):
    xs, ys = _data()
    cfg = Train(epochs=2, checkpoint=str(tmp_path / "ck.safetensors"), resume=True)
    seen = []
    m = fit(_mlp(), xs, ys, cfg, on_epoch=lambda e, _: seen.append(e))
    again = fit(_mlp(), xs, ys, cfg, on_epoch=lambda e, _: seen.append(e))
    assert seen == [0, 1]
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), again.parameters(), strict=True))


def _checkpoint(tmp_path):
    xs, ys = _data()
    path = tmp_path / "ck.safetensors"
    fit(_mlp(), xs, ys, Train(epochs=1, checkpoint=str(path)))
    return path, xs, ys


def test_checkpoint_of_another_model_names_what_differs(tmp_path):
    path, xs, ys = _checkpoint(tmp_path)
    other = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    with pytest.raises(BitladderError, match=r"another model: state '0.weight' is \[16, 8\] there, \[32, 8\] here"):
        fit(other, xs, ys, Train(epochs=2, checkpoint=str(path), resume=True))
    with pytest.raises(BitladderError, match="state '5.weight' only in the checkpoint"):
        fit(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)), xs, ys,
            Train(epochs=2, checkpoint=str(path), resume=True))


def test_checkpoint_with_other_settings_names_them(tmp_path):
    path, xs, ys = _checkpoint(tmp_path)
    with pytest.raises(BitladderError, match="other training settings: setting 'lr' is 0.001 there, 0.01 here"):
        fit(_mlp(), xs, ys, Train(epochs=1, lr=1e-2, checkpoint=str(path), resume=True))


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[: len(b) // 2], "truncated or corrupt"),
    (lambda b: b[:5], "truncated or corrupt"),
    (lambda b: b[:-9] + bytes([b[-9] ^ 0xFF]) + b[-8:], "do not match the stored checksum"),
])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, damage, message):
    path, xs, ys = _checkpoint(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(BitladderError, match=message) as e:
        fit(_mlp(), xs, ys, Train(epochs=2, checkpoint=str(path), resume=True))
    assert "\n" not in str(e.value)


def test_a_safetensors_file_that_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file(_mlp().state_dict(), str(path))
    xs, ys = _data()
    with pytest.raises(BitladderError, match="not a bitladder training checkpoint"):
        fit(_mlp(), xs, ys, Train(epochs=1, checkpoint=str(path), resume=True))
