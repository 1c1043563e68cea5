"""Splitters are found by type through single-child wrappers; other models get one clear error."""

import pytest
import torch
from torch import nn

from bitladder.errors import BitladderError
from bitladder.pipeline.parallel.blocks import Splitter, SplitterRegistry
from bitladder.pipeline.parallel.splitters import default_registry


class _Chain(nn.Sequential):
    pass


class _ChainSplitter(Splitter):
    def units(self, model):
        return [[str(i)] for i in range(len(model))]

    def stage(self, model, start, stop):
        return nn.Sequential(*model[start:stop])


def test_lookup_walks_wrappers_and_subclasses():
    reg = SplitterRegistry()
    reg.register(nn.Sequential, _ChainSplitter())
    wrapped = nn.Module()
    wrapped.inner = _Chain(nn.Linear(2, 2), nn.ReLU())
    prefix, inner, splitter = reg.find(wrapped)
    assert prefix == "inner." and inner is wrapped.inner and isinstance(splitter, _ChainSplitter)
    x = torch.randn(3, 2)
    assert torch.equal(splitter.stage(inner, 0, 2)(x), inner(x))


def test_a_model_no_splitter_knows_is_refused_by_name():
    two = nn.Module()
    two.a, two.b = nn.Linear(2, 2), nn.Linear(2, 2)
    with pytest.raises(BitladderError, match="a Module model cannot be split into pipeline stages: bitladder "
                                             "splits LlamaForCausalLM"):
        default_registry().find(two)
