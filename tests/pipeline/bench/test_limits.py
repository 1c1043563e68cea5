"""Measured limits (read bandwidth, GEMM peaks) and each bench row's fraction of its limit."""

import math
import time

import pytest

from bitladder.pipeline.bench.limits import (
    LLC_FALLBACK,
    annotate,
    fp32_gflops,
    fraction,
    int8_gops,
    integer_compute,
    llc_bytes,
    read_gbps,
    read_probe,
)

LIMITS = {"read_gbps": 20.0, "fp32_gflops": 100.0, "int8_gops": 400.0}


def test_measurements_are_positive_and_finite():
    # 64 MiB is past this machine's 32 MiB L3 and keeps the test quick; the bench reads 512 MiB
    for value in (read_gbps(64 << 20, repeats=2), fp32_gflops(256, repeats=2), int8_gops(256, repeats=2)):
        assert value is not None and value > 0 and math.isfinite(value)


def test_fraction_is_amount_per_second_over_the_rate():
    # 16 MB read in 2 ms is 8 GB/s: 0.4 of 20 GB/s
    assert fraction(16e6, 2.0, 20.0) == pytest.approx(0.4)


def test_integer_rule_on_the_bench_variant_names():
    assert integer_compute("bitladder int8 W8A8 [int8-w8a8-fbgemm-token]")
    assert integer_compute("bitladder int4 g64 [ort-w4a8]")
    assert integer_compute("torch.ao quantize_dynamic int8")
    assert integer_compute("bitladder binary [binary-xnor]")
    for kernel in ("c-lowbit-tiles", "c-lowbit-a8", "c-2bit-lut", "c-binary-lut"):  # int8 activations per block
        assert integer_compute(f"bitladder int4 g64 [{kernel}]")
    assert not integer_compute("fp32 F.linear")
    assert not integer_compute("bitladder int4 g64 [torch-int4pack-bf16]")
    assert not integer_compute("bitladder int8 W8 [fbgemm-fp16-codes]")
    assert not integer_compute("bitladder bf16 [bf16-fp32]")  # float arithmetic: judged on the fp32 peak
    assert integer_compute("bitladder int8 W8 [int8-onednn-split]")  # float activations as integer pieces


def test_the_split_kernel_is_judged_on_the_integer_work_it_does():
    # three pieces of each input row: three times the layer's operations against the int8 peak
    row = {"case": "linear", "batch": 64, "variant": "bitladder int8 W8 [int8-onednn-split]", "latency_ms": 1.0,
           "ops": 2 * 64 * 4096 * 4096}
    assert annotate([row], LIMITS)[0]["limit_fraction"] == pytest.approx(3 * 2 * 64 * 4096**2 / 1e-3 / 400e9, rel=1e-3)


def test_int8_peak_takes_the_fastest_engine(monkeypatch):
    from bitladder.pipeline.bench import limits

    calls = []
    monkeypatch.setattr(limits, "_int8_engines", lambda n: [lambda: calls.append("slow") or time.sleep(0.02),
                                                            lambda: calls.append("fast")])
    assert int8_gops(64, repeats=2) > 2 * 64**3 / 0.02 / 1e9 * 5  # the fast one's rate, not the slow one's
    assert "slow" in calls and "fast" in calls
    monkeypatch.setattr(limits, "_int8_engines", lambda n: [])
    assert int8_gops(64) is None  # no integer GEMM in this torch


def test_limit_fraction_of_synthetic_rows():
    n = k = 4096
    rows = annotate([
        # batch 1: weight bytes / latency / bandwidth (int4 g64: half a byte per weight + fp16 scale per 64)
        {"case": "linear", "batch": 1, "variant": "bitladder int4 g64 [ort-w4a8]", "latency_ms": 0.5,
         "weight_bytes": n * k // 2 + n * k // 64 * 2, "ops": 2 * n * k},
        # batch 64, integer kernel: ops / latency / int8 peak
        {"case": "linear", "batch": 64, "variant": "bitladder int8 W8A8 [int8-w8a8-fbgemm]", "latency_ms": 1.0,
         "weight_bytes": n * k, "ops": 2 * 64 * n * k},
        # batch 64, float kernel: the fp32 peak
        {"case": "linear", "batch": 64, "variant": "fp32 F.linear", "latency_ms": 4.0, "weight_bytes": 4 * n * k,
         "ops": 2 * 64 * n * k},
        # a convolution at batch 1 has only ops: compute-bound
        {"case": "conv", "batch": 1, "variant": "fp32 nn.Conv2d", "latency_ms": 2.0, "ops": 100_000_000},
        # a kernel that does not count its bytes, a whole-model row, a failed row
        {"case": "linear", "batch": 1, "variant": "x", "latency_ms": 1.0, "weight_bytes": None, "ops": 2 * n * k},
        {"case": "minilm", "batch": 32, "variant": "onnxruntime dynamic int8", "latency_ms": 50.0},
        {"case": "minilm", "batch": 32, "variant": "peer", "latency_ms": None, "error": "not installed"},
    ], LIMITS)
    got = [r["limit_fraction"] for r in rows]
    assert got[0] == pytest.approx((n * k // 2 + n * k // 64 * 2) / 0.5e-3 / 20e9, rel=1e-3)
    assert got[1] == pytest.approx(2 * 64 * n * k / 1e-3 / 400e9, rel=1e-3)
    assert got[2] == pytest.approx(2 * 64 * n * k / 4e-3 / 100e9, rel=1e-3)
    assert got[3] == pytest.approx(1e8 / 2e-3 / 100e9, rel=1e-3)
    assert got[4:] == [None, None, None]


def test_streamed_latency_is_what_the_bandwidth_fraction_divides():
    # the same row timed warm (weights from the cache) and streamed: the limit comes from the streamed time
    row = {"case": "linear", "batch": 1, "variant": "v", "latency_ms": 0.25, "stream_latency_ms": 1.0,
           "weight_bytes": 20_000_000}
    assert annotate([row], LIMITS)[0]["limit_fraction"] == pytest.approx(1.0)


def test_streamed_rows_divide_by_the_bandwidth_of_their_own_rounds():
    # the probe timed in the streamed rounds (40 GB/s) is the denominator there; read_gbps elsewhere
    row = {"case": "linear", "batch": 1, "variant": "v", "latency_ms": 0.25, "stream_latency_ms": 1.0,
           "stream_read_gbps": 40.0, "weight_bytes": 20_000_000}
    assert annotate([dict(row)], LIMITS)[0]["limit_fraction"] == pytest.approx(0.5)
    warm_only = {k: v for k, v in row.items() if k != "stream_latency_ms"}  # no streamed time: no probe either
    assert annotate([warm_only], LIMITS)[0]["limit_fraction"] == pytest.approx(20e6 / 0.25e-3 / 20e9)


def test_read_probe_reads_the_buffer_it_was_given():
    probe = read_probe(8 << 20)
    assert float(probe()) == (8 << 20) // 4  # a sum of ones: every float of the buffer read once


def test_llc_bytes_reads_the_largest_cache_level(tmp_path):
    for index, size in (("index0", "48K"), ("index2", "1280K"), ("index3", "32768K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    (tmp_path / "index4").mkdir()
    (tmp_path / "index4" / "size").write_text("garbage\n")
    assert llc_bytes(str(tmp_path)) == 32 << 20
    assert llc_bytes(str(tmp_path / "missing")) == LLC_FALLBACK
