"""The fp32 GEMM engine: chosen by vendor and ISA as BITLADDER_CPU presents them, exact fp32 on every engine."""

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.kernels import fp32_gemm
from bitladder.kernels.cpu import LEVELS, Cpu, current

ONEDNN = pytest.mark.skipif(not fp32_gemm.onednn_installed(), reason="this torch has no oneDNN fp32 linear")


def _cpu(vendor: str, level: str) -> Cpu:
    flags = LEVELS[level] if LEVELS[level] is not None else LEVELS["amx"]
    return Cpu("test", flags, flags, level, vendor)


@pytest.mark.parametrize("vendor,level,want", [
    ("AuthenticAMD", "avx512", "onednn"), ("AuthenticAMD", "avx512-bf16", "onednn"),
    ("AuthenticAMD", "avx2", "onednn"),  # oneDNN held to AVX2 still beat MKL's generic path (notes.md)
    ("AuthenticAMD", "default", "torch"),  # no vector extensions: torch's default
    ("GenuineIntel", "avx512", "torch"), ("GenuineIntel", "amx", "torch"),  # MKL's tuned paths
    ("", "avx512", "torch"),  # an unknown vendor keeps torch's default
])
def test_engine_by_vendor_and_isa(vendor, level, want):
    assert fp32_gemm.engine(_cpu(vendor, level)) == (want if fp32_gemm.onednn_installed() else "torch")


def test_the_override_holds_the_engine_to_a_lesser_cpu():
    # a level without AVX2 (and oneDNN's own cap below it) leaves torch's engine on any host
    assert fp32_gemm.engine(current({"BITLADDER_CPU": "default"})) == "torch"
    assert fp32_gemm.engine(current({"ONEDNN_MAX_CPU_ISA": "sse41"})) == "torch"


@ONEDNN
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 300), n=st.integers(1, 90), bias=st.booleans(), batch=st.booleans())
def test_every_engine_is_exact_fp32(m, k, n, bias, batch):
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    x = torch.randn((3, m, k) if batch else (m, k), generator=g)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g) if bias else None
    want = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    # fp32 summation in any order: at most k + 1 roundings of relative 2^-24, each of a partial sum of |x||w|
    size = torch.nn.functional.linear(x.double().abs(), w.double().abs(), None if b is None else b.double().abs())
    with mock.patch.object(fp32_gemm, "ONEDNN_MIN_MACS", 0):  # oneDNN's primitive even for these small products
        for name in fp32_gemm.ENGINES:
            got = fp32_gemm.linear(x, w, b, name)
            assert got.shape == want.shape and got.dtype == torch.float32
            assert ((got.double() - want).abs() <= (k + 2) * 2.0 ** -24 * size).all()


@ONEDNN
def test_onednn_falls_back_where_its_primitive_cannot_go():
    x, w, b = torch.randn(5, 8), torch.randn(3, 8, requires_grad=True), torch.randn(3)
    y = fp32_gemm.linear(x, w, b, "onednn")
    y.sum().backward()  # no autograd formula in oneDNN's primitive: torch's path keeps training possible
    torch.testing.assert_close(w.grad, x.sum(0).expand(3, 8))
    x64 = torch.randn(5, 8, dtype=torch.float64)
    assert fp32_gemm.linear(x64, w.detach().double(), None, "onednn").dtype == torch.float64


@ONEDNN
def test_onednn_switched_off_by_the_user_is_not_called(monkeypatch):
    def refuse(*args):
        raise AssertionError("oneDNN called while switched off")

    monkeypatch.setattr(fp32_gemm, "_primitive", refuse)
    x, w = torch.randn(64, 512), torch.randn(1024, 512)  # large enough for oneDNN (ONEDNN_MIN_WEIGHT)
    with torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(fp32_gemm.linear(x, w, None, "onednn"), torch.nn.functional.linear(x, w))
    with pytest.raises(AssertionError, match="switched off"):
        fp32_gemm.linear(x, w, None, "onednn")  # on again: the primitive runs


def test_an_unknown_engine_is_a_key_error():
    with pytest.raises(KeyError):
        fp32_gemm.linear(torch.randn(2, 2), torch.randn(2, 2), None, "blas9")


def test_installed_engines_start_with_torchs_own():
    names = fp32_gemm.installed()
    assert names[0] == "torch" and set(names) <= set(fp32_gemm.ENGINES)
    assert ("onednn" in names) == fp32_gemm.onednn_installed()


@ONEDNN
def test_small_products_keep_torchs_path_where_onednns_call_costs_more(monkeypatch):
    calls = []

    def primitive(x, w, b):
        calls.append(x.shape)
        return torch.nn.functional.linear(x, w, b)

    monkeypatch.setattr(fp32_gemm, "_primitive", primitive)
    small = (torch.randn(16, 384), torch.randn(384, 384))  # 2.4M multiply-adds on a 147K-element weight
    fp32_gemm.linear(*small, None, "onednn")
    assert calls == []
    fp32_gemm.linear(torch.randn(64, 384), small[1], None, "onednn")  # 9.4M multiply-adds: oneDNN
    fp32_gemm.linear(torch.randn(1, 1024), torch.randn(768, 1024), None, "onednn")  # a large weight at one row
    assert calls == [(64, 384), (1, 1024)]
