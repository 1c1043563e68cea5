"""Whole tensors and shards: plain tensors pass through, and the local bytes count what a rank holds."""

import torch

from bitladder.methods.train import shards


def test_plain_tensors_pass_through_and_bytes_count_params_and_optimiser_state():
    m = torch.nn.Linear(4, 3)  # 15 float32 parameters
    t = torch.randn(2, 2)
    assert shards.full(t) is t and shards.local(t, torch.zeros(2, 2)) is t
    opt = torch.optim.AdamW(m.parameters())
    assert shards.local_bytes(m, opt) == {"params": 60, "optim": 0}  # no state before the first step
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    # two moments per parameter (60 bytes each) and a float32 step count per tensor
    assert shards.local_bytes(m, opt) == {"params": 60, "optim": 2 * 60 + 2 * 4}
