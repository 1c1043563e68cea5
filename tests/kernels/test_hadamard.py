"""The run-time Hadamard transform: C (AVX2 and portable) and the PyTorch butterflies give the same bits, equal
the matrix form, and the fused quantiser gives the reference's codes; bad shapes are refused."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.errors import BitladderError
from bitladder.kernels import hadamard as H
from bitladder.nn.rotated import hadamard, rotate_input

needs_c = pytest.mark.skipif(not H.installed(), reason="the C kernels were not built (no compiler at install)")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 8), st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**16))
def test_butterflies_are_the_matrix_rotation(log_b, blocks, rows, seed):
    b = 2**log_b
    x = torch.randn(rows, b * blocks, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert torch.allclose(H.butterflies(x, b), rotate_input(x, hadamard(b)), atol=1e-12)


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 8), st.integers(1, 4), st.integers(1, 40), st.integers(0, 2**16))
def test_c_transform_has_the_butterflies_bits(simd, log_b, blocks, rows, seed):
    b = 2**log_b
    x = torch.randn(rows, b * blocks, generator=torch.Generator().manual_seed(seed)) * 10
    assert torch.equal(H.fwht(x, b, simd=simd), H.butterflies(x, b))


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 5), st.integers(1, 300), st.integers(0, 255), st.floats(1e-3, 1.0),
       st.booleans(), st.booleans())
def test_static_codes_of_rotated_rows_are_the_quantiser_codes_of_the_butterflies(simd, log_b, blocks, rows, zp, step,
                                                                                 clamp, split):
    b = 2**log_b
    x = torch.randn(rows, b * blocks, generator=torch.Generator().manual_seed(rows)) * 3
    bounds = (-1.5, 2.0) if clamp else None
    got = H.static_codes(x, None, bounds, H.reciprocal(step), zp, split, simd, block=b)
    y = H.butterflies(x, b)
    assert torch.equal(got, H.static_codes(y, None, bounds, H.reciprocal(step), zp, split, simd))
    if split:
        got = got[:rows].int() + 128 * got[rows:].int()
    assert torch.equal(got.int(), _per_tensor_codes(y.clamp(*bounds) if clamp else y, step, zp).int())


@needs_c
def test_static_codes_of_rotated_rows_match_the_matrix_rotation_but_for_its_rounding():
    x = torch.randn(512, 384, generator=torch.Generator().manual_seed(0))
    got = H.static_codes(x, None, None, H.reciprocal(0.02), 128, False, True, block=64).int()
    want = torch.clamp(torch.round(rotate_input(x, hadamard(64).float()) / 0.02) + 128, 0, 255).int()
    assert (got - want).abs().max() <= 1 and float((got != want).float().mean()) < 1e-3


@needs_c
@pytest.mark.parametrize("b,k", [(3, 12), (16, 40), (0, 8)])
def test_bad_blocks_are_refused(b, k):
    with pytest.raises(BitladderError, match="power of two dividing k"):
        H.fwht(torch.randn(2, k), b)
    with pytest.raises(BitladderError, match="power of two dividing k"):
        H.static_codes(torch.randn(2, k), None, None, 10.0, 0, False, True, block=b)
    with pytest.raises(ValueError, match="power of two dividing k"):  # the C entry checks for itself
        H._hadamard.fwht(torch.randn(2, k).numpy(), torch.empty(2, k).numpy(), 2, k, b, 1.0, 1, 1)


def test_autograd_tracing_and_other_dtypes_take_the_matrix_form():
    x = torch.randn(4, 64)
    assert H.fast_path(x) == H.installed()
    assert not H.fast_path(x.requires_grad_()) and not H.fast_path(torch.randn(4, 64, dtype=torch.float64))
    with torch.no_grad():
        assert H.fast_path(x) == H.installed()


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 7), st.integers(1, 5), st.integers(1, 300), st.sampled_from([127, 255]), st.floats(0.1, 50))
def test_per_token_codes_are_the_reference_grid_and_codes(simd, log_b, blocks, rows, levels, spread):
    b = 2**log_b
    x = torch.randn(rows, 8 * b * blocks, generator=torch.Generator().manual_seed(rows)) * spread
    x[:, 0] += spread  # an outlier channel, spread over its block by the rotation
    q, scale, zp, r = H.token_codes(x, b, levels, simd=simd)
    rq, rscale, rzp, rr = H.token_reference(x, b, levels)
    assert torch.equal(q, rq) and (scale, zp) == (rscale, rzp) and torch.equal(r, rr)
    assert 0 <= zp <= levels and int(q.max()) <= levels + 1  # codes span the grid (one step of rounding slack)
    # dequantised, each row is its rotated input within half a step of its own scale
    y = H.butterflies(x, b)
    assert ((q.float() - zp) * scale * r - y).abs().max() <= 0.5001 * scale * float(r.max())


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 300), st.sampled_from([127, 255]), st.booleans(), st.booleans())
def test_per_token_codes_of_scaled_rows_are_the_tensor_operations_bits(simd, rows, k, levels, scaled, ties):
    # no rotation (block 1), SmoothQuant's input scale or none, widths that leave a scalar tail
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, k, generator=g) * 3
    if ties:  # a row of equal magnitudes: every code is an end of the grid, and zeros sit on the zero point
        x[0] = torch.sign(x[0]) * 2.0
    s = torch.rand(k, generator=g) + 0.5 if scaled else None
    x0 = x.clone()
    q, scale, zp, r = H.token_codes(x, 1, levels, s, simd=simd)
    assert torch.equal(x, x0)  # the caller's rows are read, not overwritten
    rq, rscale, rzp, rr = H.token_reference(x, 1, levels, s)
    assert torch.equal(q, rq) and (scale, zp) == (rscale, rzp) and torch.equal(r, rr)


@needs_c
def test_per_token_codes_refuse_an_input_scale_of_another_width():
    with pytest.raises(BitladderError, match="one value per input"):
        H.token_codes(torch.randn(3, 16), 1, 255, torch.ones(15))


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize("signs", ["mixed", "positive", "negative"])
@pytest.mark.parametrize("rows", [1, 7, 600])
def test_per_token_codes_when_the_rows_extremes_share_a_sign(simd, signs, rows):
    # the first pass quantises on the grid of [-1, 1] and keeps those codes only if every row's extremes make
    # that grid; rows whose largest magnitudes are all positive (or all negative) make another, and need the second
    b, k = 64, 384
    g = torch.Generator().manual_seed(rows)
    y = torch.randn(rows, k, generator=g) * 0.1
    sign = {"mixed": (-1.0) ** torch.arange(rows), "positive": torch.ones(rows), "negative": -torch.ones(rows)}[signs]
    y[:, 5] = 4.0 * sign
    x = H.butterflies(y, b)  # the rotation is its own inverse: rotated again, x is y (to rounding)
    q, scale, zp, r = H.token_codes(x, b, 255, simd=simd)
    rq, rscale, rzp, rr = H.token_reference(x, b, 255)
    assert torch.equal(q, rq) and (scale, zp) == (rscale, rzp) and torch.equal(r, rr)
    if signs == "mixed" and rows > 1:  # the first pass's grid
        assert (scale, zp) == (2 / 255, 128)
    else:  # one side reaches 1 and the other stays near 0: a narrower grid, its zero point near an end
        assert scale < 0.7 * 2 / 255 and (zp < 64 if sign[0] > 0 else zp > 191)


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@settings(max_examples=40, deadline=None)
@given(st.integers(0, 7), st.integers(1, 5), st.integers(0, 300), st.floats(0.0, 50), st.booleans(), st.booleans())
def test_rotated_rows_divided_by_their_largest_magnitude_have_the_reference_bits(simd, log_b, blocks, rows, spread,
                                                                                 odd, scaled):
    b = 2**log_b
    k = b * blocks + (0 if b > 1 or not odd else 3)  # widths that leave a scalar tail (b = 1 takes any width)
    g = torch.Generator().manual_seed(rows + k)
    x = torch.randn(rows, k, generator=g) * spread
    s = torch.rand(k, generator=g) + 0.5 if scaled else None  # SmoothQuant's input scale, applied first
    if rows:
        x[0] = 0  # an all-zero row divides by the floor, 1e-30
    x0 = x.clone()
    y, r = H.fwht_rows(x, b, simd=simd, in_scale=s)
    ry, rr = H.rows_reference(x, b, s)
    assert torch.equal(y, ry) and torch.equal(r, rr) and r.shape == (rows, 1) and torch.equal(x, x0)
    if rows:
        assert float(r[0]) == pytest.approx(1e-30) and y.abs().max() <= 1.0


@needs_c
def test_fwht_rows_refuses_short_buffers():
    with pytest.raises(ValueError, match="fwht_rows: b must be a power of two dividing k, buffers"):
        H._hadamard.fwht_rows(torch.randn(2, 8).numpy(), torch.empty(0).numpy(), torch.empty(2, 8).numpy(),
                              torch.empty(1).numpy(), 2, 8, 1, 1.0, 1, 1)
    with pytest.raises(ValueError, match="fwht_rows: b must be a power of two dividing k, buffers"):
        H._hadamard.fwht_rows(torch.randn(2, 8).numpy(), torch.ones(7).numpy(), torch.empty(2, 8).numpy(),
                              torch.empty(2).numpy(), 2, 8, 1, 1.0, 1, 1)  # an input scale shorter than k


def _per_tensor_codes(x: torch.Tensor, step: float, zp: int) -> torch.Tensor:
    """torch's own quantiser: the codes the static kernels' PyTorch path computes."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(x, step, zp, torch.quint8).int_repr()


@needs_c
@pytest.mark.parametrize("simd", [True, False])
@settings(max_examples=60, deadline=None)
@given(st.integers(0, 40), st.integers(1, 200), st.floats(1e-3, 0.3), st.integers(0, 255), st.booleans(),
       st.booleans(), st.booleans(), st.booleans())
def test_static_codes_are_torch_quantisers_codes_scaled_clamped_and_split(simd, rows, k, step, zp, scaled, clamp,
                                                                          split, ties):
    g = torch.Generator().manual_seed(rows * 1000 + k)
    x = torch.randn(rows, k, generator=g) * 4
    if ties:  # values whose product with the reciprocal lands on (or next to) .5: the rounding is tested
        x = (torch.randint(-300, 300, (rows, k), generator=g).float() + 0.5) * torch.tensor(step).float()
    s = torch.rand(k, generator=g) + 0.5 if scaled else None
    bounds = (-1.5, 2.0) if clamp else None
    want = x if s is None else x * s
    want = _per_tensor_codes(want.clamp(*bounds) if clamp else want, step, zp)
    got = H.static_codes(x, s, bounds, H.reciprocal(step), zp, split, simd)
    if split:
        assert got.shape == (2 * rows, k) and bool((got[:rows] <= 127).all()) and bool((got[rows:] <= 1).all())
        got = got[:rows].int() + 128 * got[rows:].int()
    assert torch.equal(got.int(), want.int())


@needs_c
@pytest.mark.parametrize("clamp", [None, (-1.0, 1.0)])
def test_static_codes_of_nan_and_infinities_are_the_same_on_both_paths(clamp):
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.3] * 10])
    got = [H.static_codes(x, None, clamp, 10.0, 100, False, simd) for simd in (True, False)]
    assert torch.equal(got[0], got[1])
    assert got[0][0, 1] == (110 if clamp else 255) and got[0][0, 2] == (90 if clamp else 0)


@needs_c
def test_static_codes_refuse_short_buffers_and_bad_zero_points():
    x, q = torch.randn(2, 8).numpy(), torch.empty(2, 8, dtype=torch.uint8).numpy()
    none = torch.empty(0).numpy()
    with pytest.raises(ValueError, match="static_codes: b must be .* buffers"):  # split needs (2m, k)
        H._hadamard.static_codes(x, none, q, 2, 8, 1, 1.0, 0.0, 0.0, 0, 1.0, 0.0, 1, 1, 1)
    with pytest.raises(ValueError, match="0 <= zp <= 255"):
        H._hadamard.static_codes(x, none, q, 2, 8, 1, 1.0, 0.0, 0.0, 0, 1.0, 300.0, 0, 1, 1)
    with pytest.raises(ValueError, match="static_codes: b must be .* buffers"):  # an input scale shorter than k
        H._hadamard.static_codes(x, torch.ones(3).numpy(), q, 2, 8, 1, 1.0, 0.0, 0.0, 0, 1.0, 0.0, 0, 1, 1)
    with pytest.raises(ValueError, match="power of two dividing k"):  # a block that does not divide k
        H._hadamard.static_codes(x, none, q, 2, 8, 16, 1.0, 0.0, 0.0, 0, 1.0, 0.0, 0, 1, 1)
