import pytest
import torch
from torch import nn

import bitladder
from bitladder import BitladderError, Magnitude
from bitladder.methods.prune.magnitude import sparsity
from bitladder.methods.prune.schedule import cubic_sparsity, gradual_prune
from bitladder.methods.prune.structured import ChannelPrune, prune_channels


def test_cubic_schedule_is_monotone_and_ends_at_target():
    vals = [cubic_sparsity(t, 10, 0.9) for t in range(11)]
    assert vals[0] == 0.0 and vals[-1] == pytest.approx(0.9)
    assert all(a < b for a, b in zip(vals, vals[1:]))
    with pytest.raises(BitladderError):
        cubic_sparsity(11, 10, 0.9)


def test_gradual_prune_calls_tuning_each_step_and_reaches_sparsity():
    calls = []
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    out = gradual_prune(model, Magnitude(0.75), steps=3, tune=lambda m: calls.append(1) or m)
    assert len(calls) == 3
    assert all(s == pytest.approx(0.75, abs=0.01) for s in sparsity(out).values())


def test_taylor_importance_needs_labels_and_prunes():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    with pytest.raises(BitladderError, match="needs labels"):
        prune_channels(m, ChannelPrune(0.5, "taylor"), x)
    p, rep = prune_channels(m, ChannelPrune(0.5, "taylor"), x, target=y)
    assert rep["pruned"]["0"] == (32, 16) and p(x).shape == (64, 4)
    assert bitladder.quantize(p, bitladder.Int(8))(x).shape == (64, 4)


def test_iterative_channel_prune_reaches_the_flops_target_with_tuning_between_steps():
    from bitladder.methods.prune.budget import flops
    from bitladder.methods.prune.schedule import iterative_channel_prune

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(16 * 16, 4))
    x, seen = torch.randn(2, 1, 4, 4), []
    p, reports = iterative_channel_prune(m, ChannelPrune(0.5, target="flops"), x, steps=3,
                                         tune=lambda mod: seen.append(flops(mod, x)) or mod)
    assert len(reports) == 3 and seen == sorted(seen, reverse=True)  # shrinks at every step
    assert 0.44 <= flops(p, x) / flops(m, x) <= 0.5 and p(x).shape == (2, 4)
