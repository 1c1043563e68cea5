import torch
from torch import nn

from bitladder.methods.prune.handlers import handler_for

from tests.methods.prune.nets import SelfAttention


def test_grouped_convolution_loses_whole_groups_and_still_runs():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    h = handler_for(conv)
    h.keep(conv, "out", torch.tensor([2, 3, 6, 7]))  # groups 1 and 3
    h.keep(conv, "in", torch.tensor([2, 3, 6, 7]))
    assert (conv.groups, conv.in_channels, conv.out_channels) == (2, 4, 4)
    assert conv(torch.randn(1, 4, 5, 5)).shape == (1, 4, 5, 5)


def test_layernorm_and_batchnorm_are_sliced_with_their_statistics():
    ln, bn = nn.LayerNorm(6), nn.BatchNorm1d(6)
    bn.running_mean = torch.arange(6.0)
    for m in (ln, bn):
        handler_for(m).keep(m, "chan", torch.tensor([0, 5]))
    assert ln.normalized_shape == (2,) and ln(torch.randn(3, 2)).shape == (3, 2)
    assert bn.num_features == 2 and bn.running_mean.tolist() == [0.0, 5.0]


def test_attention_heads_go_whole_and_the_block_runs():
    torch.manual_seed(0)
    m = SelfAttention(16, heads=4).eval()
    h = handler_for(m)
    scores = h.score(m, "heads", "l1")
    assert scores.shape == (16,)
    h.keep(m, "heads", torch.cat([torch.arange(4, 8), torch.arange(12, 16)]))  # heads 1 and 3
    assert m.heads == 2 and m.q.weight.shape == (8, 16) and m.o.weight.shape == (16, 8)
    assert m(torch.randn(2, 5, 16)).shape == (2, 5, 16)
