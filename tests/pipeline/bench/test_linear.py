"""The Linear bench's streamed batch-1 timing: enough copies to leave the cache, one call per copy per round."""

import pytest
import torch

from bitladder.pipeline.bench import linear as bench_linear
from bitladder.pipeline.bench.linear import copies_for, paired_fraction, streamed_rounds, working_set


def test_copies_exceed_twice_the_cache_within_the_cap():
    assert copies_for(1 << 20, 64 << 20) == 64  # 1 MiB weights: 64 copies = 2 x a 32 MiB cache
    assert copies_for(9 << 20, 64 << 20) == 8  # 8 x 9 MiB = 72 MiB >= 64 MiB, 7 copies would not be
    assert copies_for(100 << 20, 64 << 20) == 1  # one weight already past the cache
    assert copies_for(1000, 64 << 20) == 64  # capped
    assert copies_for(None, 64 << 20) == 1  # a kernel that does not count its bytes


def test_the_working_set_is_twice_the_cache_within_a_quarter_of_the_memory():
    assert working_set(32 << 20, 24 << 30, 45) == 64 << 20  # a 32 MiB L3 on a 24 GiB machine: twice the cache
    # a 300 MiB L3: 45 variants of 600 MiB would take 26 GiB of a 24 GiB machine; each gets 1/180 of it
    assert working_set(300 << 20, 24 << 30, 45) == (24 << 30) // 4 // 45 < 600 << 20
    assert working_set(300 << 20, 128 << 30, 45) == 600 << 20
    assert working_set(32 << 20, 0, 45) == 1  # nothing available: one copy each (copies_for's floor)


def test_available_memory_is_read_from_meminfo(tmp_path):
    from bitladder.pipeline.bench.limits import available_bytes

    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       24000000 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n")
    assert available_bytes(str(info)) == 20000000 * 1024
    assert available_bytes(str(tmp_path / "missing")) > 0  # the free pages, where there is no meminfo


def test_streamed_calls_every_copy_each_round():
    calls = {"a": [0, 0, 0], "b": [0]}
    fns = {name: [lambda name=name, i=i: calls[name].__setitem__(i, calls[name][i] + 1) for i in range(len(c))]
           for name, c in calls.items()}
    samples = streamed_rounds(fns, rounds=4)
    assert calls == {"a": [5, 5, 5], "b": [5]}  # one warm-up pass, then four rounds
    assert set(samples) == {"a", "b"} and all(len(v) == 4 and min(v) >= 0 for v in samples.values())


def test_streamed_rounds_time_each_variant_in_its_round(monkeypatch):
    ticks = iter(range(1000))
    monkeypatch.setattr(bench_linear.time, "perf_counter", lambda: next(ticks) ** 2 / 1e3)  # each call slower
    samples = streamed_rounds({"a": [lambda: None, lambda: None], "probe": [lambda: None]}, rounds=3)
    spans = [((2 * i + 1) ** 2 - (2 * i) ** 2) / 1e3 for i in range(6)]  # the tick pairs of a, probe, a, ...
    assert samples["a"] == pytest.approx([s / 2 for s in spans[0::2]])  # per call: two copies a round
    assert samples["probe"] == pytest.approx(spans[1::2])


def test_the_paired_fraction_cancels_the_machine_slowing_down_between_rounds():
    # a kernel reading at half the probe's rate in every round, while the whole machine runs 1x, 3x, 2x, 2x, 1x
    # slower: paired round by round it is 0.5, where its median over the probe's fastest round gives 0.25
    slow = [1, 3, 2, 2, 1]
    probe = [1e-3 * f for f in slow]  # 1 MB per 1 ms at full speed
    kernel = list(probe)  # 0.5 MB per call in the probe's time for 1 MB: half its rate
    assert paired_fraction(500_000, kernel, 1_000_000, probe) == pytest.approx(0.5)
    median, fastest = sorted(kernel)[2], min(probe)
    assert (500_000 / median) / (1_000_000 / fastest) == pytest.approx(0.5 / 2)
    with pytest.raises(ValueError):  # rounds are paired one to one
        paired_fraction(1, [1.0, 2.0], 1, [1.0])


def test_batch_one_rows_carry_the_streamed_latency(monkeypatch):
    monkeypatch.setattr(bench_linear, "llc_bytes", lambda: 1 << 20)  # a small cache keeps the copies few
    monkeypatch.setattr(bench_linear, "available_bytes", lambda: 64 << 30)  # not the memory: the cache decides
    rows = bench_linear.run_case(128, 128, 1, rounds=3)
    fp32 = next(r for r in rows if r["variant"] == "fp32 F.linear")
    assert fp32["stream_ratio_vs_fp32"] == 1.0 and fp32["stream_latency_ms"] > 0
    assert all(r["stream_latency_ms"] > 0 for r in rows)
    assert any(r["selected"] for r in rows)
    # the bandwidth probe timed in the same rounds: one figure for the case, on every row, and not a row itself
    assert len({r["stream_read_gbps"] for r in rows}) == 1 and fp32["stream_read_gbps"] > 0
    assert all(r["paired_limit_fraction"] > 0 for r in rows if r["weight_bytes"])
    assert bench_linear.READ_PROBE not in {r["variant"] for r in rows}
    # the bytes each variant cycled through: twice the cache, or fewer where the copy cap stopped it
    for r in (r for r in rows if r["weight_bytes"]):
        want = bench_linear.copies_for(r["weight_bytes"], 2 << 20) * r["weight_bytes"]
        assert r["stream_working_set_bytes"] == want and (want >= 2 << 20 or want == 64 * r["weight_bytes"])
    assert all("stream_latency_ms" not in r and "stream_read_gbps" not in r and "paired_limit_fraction" not in r
               for r in bench_linear.run_case(128, 128, 4, rounds=3))


def test_the_probe_of_the_rounds_reads_its_bytes(monkeypatch):
    from bitladder.pipeline.bench import limits

    sizes = []

    def probe(nbytes):
        sizes.append(nbytes)
        return limits.read_probe(nbytes)

    monkeypatch.setattr(bench_linear, "read_probe", probe)
    monkeypatch.setattr(bench_linear, "llc_bytes", lambda: 40 << 20)
    bench_linear.run_case(64, 64, 1, rounds=1)
    assert sizes == [80 << 20]  # twice the cache
    monkeypatch.setattr(bench_linear, "llc_bytes", lambda: 1 << 20)
    bench_linear.run_case(64, 64, 1, rounds=1)
    assert sizes[-1] == bench_linear.PROBE_MIN_BYTES  # never less than the floor, whatever sysfs says


def test_rows_carry_the_ratio_to_fp32_on_onednn():
    from bitladder.kernels import fp32_gemm

    rows = bench_linear.run_case(128, 128, 4, rounds=3)
    names = {r["variant"] for r in rows}
    if not fp32_gemm.onednn_installed():
        assert bench_linear.FP32_ONEDNN not in names and all("ratio_vs_fp32_onednn" not in r for r in rows)
        return
    ref = next(r for r in rows if r["variant"] == bench_linear.FP32_ONEDNN)
    assert ref["ratio_vs_fp32_onednn"] == 1.0 and ref["weight_bytes"] == 128 * 128 * 4
    assert all(r["ratio_vs_fp32_onednn"] > 0 for r in rows)


def test_little_memory_shrinks_the_copies_and_the_rows_say_so(monkeypatch):
    monkeypatch.setattr(bench_linear, "llc_bytes", lambda: 1 << 20)
    monkeypatch.setattr(bench_linear, "available_bytes", lambda: 8 << 20)  # 8 MiB: a quarter shared by all
    every = bench_linear.run_case(128, 128, 1, rounds=3)
    reach = (8 << 20) // 4 // len(every)  # one share per variant, counted or not
    rows = [r for r in every if r["weight_bytes"]]
    assert all(r["stream_working_set_bytes"] < 2 << 20 for r in rows)
    assert all(r["stream_working_set_bytes"] == copies_for(r["weight_bytes"], reach) * r["weight_bytes"]
               for r in rows)


def test_without_avx2_torch_ao_is_a_row_that_says_why_not_a_crash(monkeypatch):
    from bitladder.kernels import cpu
    from bitladder.pipeline.bench import peers

    nehalem = cpu.Cpu("Nehalem", frozenset(), frozenset(), vendor="GenuineIntel")
    monkeypatch.setattr(peers, "current", lambda env=None: nehalem)  # torch's oneDNN dynamic Linear: SIGILL there
    why = peers.torch_ao_unavailable()
    assert "AVX2" in why and "FindMinMax" in why
    monkeypatch.setattr(bench_linear, "run_case", lambda n, k, m, rounds: [{"variant": "fp32 F.linear", "batch": m}])
    rows = list(bench_linear.linear_rows(sizes=(64,), batches=(1, 4), rounds=1))
    assert [(r["variant"], r["batch"]) for r in rows] == [
        ("fp32 F.linear", 1), (bench_linear.TORCH_AO, 1), ("fp32 F.linear", 4), (bench_linear.TORCH_AO, 4)]
    assert all(r["error"] == why and r["latency_ms"] is None for r in rows[1::2])
    assert bench_linear.TORCH_AO not in bench_linear._variants(torch.randn(64, 64), 1)[0]  # never built, never called
    haswell = cpu.Cpu("Haswell", frozenset({"avx2"}), frozenset({"avx2"}), vendor="GenuineIntel")
    monkeypatch.setattr(peers, "current", lambda env=None: haswell)
    assert peers.torch_ao_unavailable() is None
    assert bench_linear.TORCH_AO in bench_linear._variants(torch.randn(64, 64), 1)[0]
