"""QuantModule's own parts: the QuantizedTensor a layer describes its buffers with."""

import torch
from torch import nn

import bitladder


def test_the_weight_description_is_kept_until_a_buffer_or_the_metadata_changes():
    q = bitladder.quantize(nn.Sequential(nn.Linear(64, 16)), bitladder.Int(4, group=32))[0]
    first = q.qweight
    assert q.qweight is first  # built once: a lookup or a call does not rebuild it
    q.weight_scale.mul_(2)  # in place: the kept description reads the same tensor
    assert q.qweight is first and torch.equal(first.scale, q.weight_scale)
    q.weight_scale = q.weight_scale / 2  # a new tensor (as scale_outputs and state-dict loading give)
    assert q.qweight is not first and q.qweight.scale is q.weight_scale
    kept = q.qweight
    q.n_clipped = kept.n_clipped + 1
    assert q.qweight is not kept and q.qweight.n_clipped == kept.n_clipped + 1
    assert torch.equal(q.qweight.dequantize(), kept.dequantize())
