"""Layout helpers of the C kernels' weights: panels interleave units' 32-byte vectors and unpack again."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.kernels.packrows import columns, panels


@settings(max_examples=40, deadline=None)
@given(nc=st.integers(1, 11), vectors=st.integers(1, 6), tn=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_panels_interleave_a_tiles_columns_and_unpack_again(nc, vectors, tn, seed):
    cols = np.random.default_rng(seed).integers(0, 256, (nc, vectors * 32), dtype=np.uint8)
    flat = panels(cols, tn)
    assert flat.size == cols.size
    width = min(tn, nc)  # the first panel: vector 0 of each of its columns, then vector 1 of each, ...
    assert np.array_equal(flat[: width * 32].reshape(width, 32), cols[:width, :32])
    if nc >= tn and vectors > 1:  # then vector 1 of each of the first panel's columns
        assert np.array_equal(flat[tn * 32: 2 * tn * 32].reshape(tn, 32), cols[:tn, 32:64])
    tail = nc - nc // tn * tn  # the last panel holds what is left, vector by vector
    if tail:
        start = (nc - tail) * vectors * 32
        assert np.array_equal(flat[start: start + tail * 32].reshape(tail, 32), cols[nc - tail:, :32])
    assert np.array_equal(columns(flat.reshape(nc, -1), tn), cols)
