import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats.layout import Layout


@settings(max_examples=100, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), data=st.data())
def test_blocks_round_trip_any_axis_and_group(shape, data):
    gran = data.draw(st.sampled_from(["tensor", "channel", "group"]))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    group = data.draw(st.integers(1, 20)) if gran == "group" else None
    lay = Layout(gran, axis, group)
    x = torch.randn(shape)
    xb = lay.to_blocks(x)
    c, k, nb, b = lay.dims(tuple(shape))
    assert xb.shape == (c, nb, b)
    assert torch.equal(lay.from_blocks(xb, x.shape), x)


def test_channel_axis_is_respected():
    x = torch.arange(24.0).reshape(2, 3, 4)
    rows = Layout("channel", axis=1).rows(x)
    assert rows.shape == (3, 8)
    assert torch.equal(rows[1], x[:, 1, :].reshape(-1))


def test_group_needs_size():
    with pytest.raises(ValueError, match="group size"):
        Layout("group")
    with pytest.raises(ValueError, match="granularity"):
        Layout("row")
