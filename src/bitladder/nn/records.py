"""Constructor records of plain torch layers: the type name and the arguments that build it again
(fresh weights). :mod:`bitladder.io.structure` records reshaped models with these.

>>> from torch import nn
>>> kind, args = layer_args(nn.Linear(3, 2, bias=False))
>>> kind, args, build_layer(kind, args).weight.shape
('Linear', {'in_features': 3, 'out_features': 2, 'bias': False}, torch.Size([2, 3]))
"""

from __future__ import annotations

import sys

from torch import nn

LAYERS = {"Linear": nn.Linear, "Conv1d": nn.Conv1d, "Conv2d": nn.Conv2d, "BatchNorm1d": nn.BatchNorm1d,
          "BatchNorm2d": nn.BatchNorm2d, "LayerNorm": nn.LayerNorm, "Embedding": nn.Embedding}


def layer_args(m: nn.Module) -> tuple[str, dict] | None:
    """(type name, constructor arguments) of a plain torch layer; None for anything else."""
    if isinstance(m, nn.Linear):
        return "Linear", {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.Conv1d | nn.Conv2d):
        return type(m).__name__, {"in_channels": m.in_channels, "out_channels": m.out_channels,
                                  "kernel_size": list(m.kernel_size), "stride": list(m.stride),
                                  "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                                  "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
                                  "padding_mode": m.padding_mode}
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        return type(m).__name__, {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                                  "affine": m.affine, "track_running_stats": m.track_running_stats}
    if isinstance(m, nn.LayerNorm):
        return "LayerNorm", {"normalized_shape": list(m.normalized_shape), "eps": m.eps,
                             "elementwise_affine": m.elementwise_affine}
    if isinstance(m, nn.Embedding):
        return "Embedding", {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                             "padding_idx": m.padding_idx}
    return None


def build_layer(kind: str, args: dict) -> nn.Module:
    """A plain torch layer from :func:`layer_args`' record (fresh weights)."""
    return LAYERS[kind](**args)


def is_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (a Linear that stores its weight as (in, out)); checked without importing
    transformers, which is loaded whenever such a module exists."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(m, utils.Conv1D)


def in_axis(m: nn.Module) -> int:
    """The weight axis that runs over a Linear-like layer's inputs: 0 for ``Conv1D``, else 1."""
    return 0 if is_conv1d(m) else 1
