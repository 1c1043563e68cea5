"""Outlier input channels beside a static integer GEMM: the float function is kept, wide channels stop
coarsening the grid, every compute path agrees, and the channels survive an artifact round trip."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitladder
from bitladder import Act, BitladderError, Int
from bitladder.io.artifact import load, save


def _wide(n_in: int, wide: list[int], seed: int = 0) -> torch.Tensor:
    """Inputs whose channels ``wide`` are 100x the others (the same channels in every row, as in transformers)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, n_in, generator=g)
    x[:, wide] *= 100
    return x


@settings(max_examples=25, deadline=None)
@given(n_in=st.integers(4, 40), n_out=st.integers(1, 12), k=st.integers(1, 3), seed=st.integers(0, 99))
def test_float_activations_keep_the_quantised_weights_function(n_in, n_out, k, seed):
    torch.manual_seed(seed)
    q = bitladder.quantize(nn.Linear(n_in, n_out), Int(8, kernel="dequant-fp32"))  # float activations
    want = q.effective_weight().float()
    idx = torch.randperm(n_in)[:k]
    q.set_outliers(idx)
    x = torch.randn(5, n_in)
    assert torch.allclose(q.effective_weight().float(), want, atol=1e-6)  # the layer still applies that weight
    assert torch.allclose(q(x), x @ want.T + q.bias, atol=1e-5)
    assert q.qmeta["outliers"] == k and torch.all(q.in_scale[idx] == 0)


def test_wide_channels_no_longer_coarsen_the_static_grid():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    calib, x = _wide(64, [5, 40]), _wide(64, [5, 40], seed=1)
    with torch.no_grad():
        ref = lin(x)
    err = {}
    for k in (0, 2):
        q = bitladder.quantize(lin, Int(8, act=Act(outliers=k)), calib=[calib])
        if k:
            assert q.act_outliers.tolist() == [5, 40]  # the widest channels, found on the calibration data
            assert "outliers=2" in repr(q)
        with torch.no_grad():
            err[k] = float((q(x) - ref).norm() / ref.norm())
    assert err[2] < err[0] / 10


@pytest.mark.parametrize("sq", [None, 0.5])
def test_the_integer_kernel_computes_what_the_reference_path_does(sq):
    torch.manual_seed(0)
    q = bitladder.quantize(nn.Linear(64, 48), Int(8, act=Act(smoothquant=sq, outliers=3)), calib=[_wide(64, [1, 2])])
    x = _wide(64, [1, 2], seed=2)[:40]
    with torch.inference_mode():
        fast = q(x)
        kernel = q.kernel
        q.set_kernel_policy("dequant-fp32")
        ref = q(x)
    assert kernel.startswith("int8-w8a8") or kernel.endswith("fakequant")  # (no integer GEMM on this host)
    # 8-bit codes where the CPU's GEMM takes them, a 127-step grid elsewhere (BITLADDER_CPU=avx2)
    assert torch.allclose(fast, ref, atol=0.02 * float(ref.abs().max()))


def test_outlier_channels_survive_an_artifact_round_trip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    q = bitladder.quantize(model, Int(8, act=Act(smoothquant=0.5, outliers=2)), calib=[_wide(32, [3, 9])])
    x = _wide(32, [3, 9], seed=3)[:10]
    with torch.no_grad():
        want = q(x)
    save(q, tmp_path / "o.safetensors")
    back = load(tmp_path / "o.safetensors", model=nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)))
    assert back[0].act_outliers.tolist() == q[0].act_outliers.tolist() == [3, 9]
    with torch.no_grad():
        assert torch.equal(back(x), want)


def test_channel_indices_out_of_range_are_one_clear_error():
    q = bitladder.quantize(nn.Linear(8, 4), Int(8))
    q.set_outliers(torch.tensor([1]))
    q.act_outliers.fill_(8)
    with pytest.raises(BitladderError, match=r"outlier channel indices must lie in \[0, 8\)"):
        q(torch.randn(2, 8))


@pytest.mark.parametrize("sq", [None, 0.5])
def test_an_input_scale_that_only_zeroes_outliers_moves_into_the_weight(sq):
    from bitladder.nn.outliers import mask_free

    torch.manual_seed(0)
    q = bitladder.quantize(nn.Linear(64, 48), Int(8, act=Act(smoothquant=sq, outliers=3), kernel="dequant-fp32"),
                           calib=[_wide(64, [1, 2, 7])])
    free = mask_free(q)
    if sq:  # SmoothQuant's factors must still multiply the input
        assert free is q
        return
    idx = q.act_outliers
    assert "in_scale" not in free.qmeta and "in_scale" in q.qmeta  # the original is left as it was
    assert torch.equal(free.qweight.dequantize()[:, idx], torch.zeros(48, 3))
    x = _wide(64, [1, 2, 7], seed=4)[:30] * 1.5  # outlier channels beyond the grid: clamped, then met by zeros
    with torch.inference_mode():
        ref = q(x)
        assert torch.allclose(free(x), ref, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("weights", [dict(granularity="tensor"), dict(group=16, symmetric=False)],
                         ids=["per-tensor", "group-asym"])
def test_only_weights_with_a_scale_per_row_or_group_have_their_columns_zeroed(weights):
    from bitladder.nn.outliers import mask_free

    torch.manual_seed(0)
    q = bitladder.quantize(nn.Linear(64, 48), Int(8, act=Act(outliers=3), kernel="dequant-fp32", **weights),
                           calib=[_wide(64, [1, 2, 7])])
    free = mask_free(q)
    if "granularity" in weights:  # one scale for the whole tensor: its row layout is not (out, in); left alone
        assert free is q
        return
    assert torch.equal(free.qweight.dequantize()[:, q.act_outliers], torch.zeros(48, 3))
    x = _wide(64, [1, 2, 7], seed=5)[:30]
    with torch.inference_mode():
        assert torch.allclose(free(x), q(x), atol=1e-5 * float(q(x).abs().max()))
