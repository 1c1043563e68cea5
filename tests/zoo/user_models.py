"""Factories used by the tests, written the way a user would write them."""

import torch
from torch import nn


def classifier():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    y = (x[:, 0] > 0).long()
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)), x, y


def regressor():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.GELU(), nn.Linear(32, 8)), torch.randn(64, 10)


def bad_return():
    return 42


def raises():
    raise RuntimeError("checkpoint folder /data/missing not found")


class _Slow(nn.Module):
    """Holds every forward for 0.2 s: a model whose trials last long enough to be killed in the middle."""

    def forward(self, x):
        import time

        time.sleep(0.2)
        return x


def slow_classifier():
    model, x, y = classifier()
    return nn.Sequential(*model, _Slow()), x, y


def calibrated_regressor():
    """The dict form with calibration rows of their own (drawn after the evaluation rows)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 32))
    x = torch.randn(96, 64)
    return {"model": model, "inputs": x[:64], "calib": [x[64:80], x[80:]]}


def calib_is_eval():
    model, x = regressor()
    return model, x, None, x[:8]
