"""Latency with each model in its own process: every worker runs in every round, failures are reported."""

from __future__ import annotations

import os
import platform
import time

import torch
from torch import nn

from bitladder.pipeline.bench.isolated import isolated_latency
from bitladder.pipeline.measure.allocator import SETTLED


class _Sleepy(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x):
        assert torch.is_inference_mode_enabled()  # timed as served: no autograd
        time.sleep(self.seconds)
        return x


def sleepy(seconds: float):
    """A worker's factory: (model, batch, info)."""
    return _Sleepy(seconds), torch.zeros(2), {"pid": os.getpid(), "seconds": seconds}


def broken():
    raise ValueError("cannot build this one")


class _Dies(nn.Module):
    def forward(self, x):
        os._exit(3)  # a crash in the middle of the timing rounds


def dies():
    return _Dies(), torch.zeros(2), None


def test_each_model_runs_in_its_own_process_and_failures_are_reported():
    me = f"{__name__}:"
    got = isolated_latency({"fast": (me + "sleepy", (0.002,)), "bad": (me + "broken", ()),
                            "crash": (me + "dies", ()), "slow": (me + "sleepy", (0.03,))}, repeats=4, warmup=1,
                           pause=0.0)
    assert got["bad"] == {"error": "ValueError: cannot build this one"}
    assert got["crash"] == {"error": "the worker exited (code 3)"}
    fast, slow = got["fast"], got["slow"]
    assert fast["info"]["seconds"] == 0.002 and slow["info"]["seconds"] == 0.03  # info comes back
    assert len({fast["info"]["pid"], slow["info"]["pid"], os.getpid()}) == 3
    assert 0.002 <= fast["latency_s"] < 0.03 <= slow["latency_s"]
    # every worker fixes the same malloc thresholds after its build, whatever the build moved them to
    assert fast["allocator"] == slow["allocator"]
    if platform.libc_ver()[0] == "glibc":
        assert fast["allocator"] == {"allocator": "glibc", "mmap_threshold": SETTLED[0], "trim_threshold": SETTLED[1]}
    for g in (fast, slow):  # one time per timed round, the median of which is the latency
        assert len(g["rounds_s"]) == 4 and sorted(g["rounds_s"])[1] <= g["latency_s"] <= sorted(g["rounds_s"])[2]
    for g in (fast, slow):
        assert g["peak_rss_mb"] is None or 10 < g["peak_rss_mb"] < 4096


class _SleepPerRow(nn.Module):
    def forward(self, x):
        time.sleep(0.002 * x.shape[0])
        return x


def per_row():
    """Two timed batches of different sizes: each round times both."""
    return _SleepPerRow(), [torch.zeros(8), torch.zeros(1)], None


def test_every_batch_is_timed_in_every_round():
    got = isolated_latency({"m": (f"{__name__}:per_row", ())}, repeats=3, warmup=1, pause=0.0, batches=2)["m"]
    big, one = got["by_batch"]
    assert len(big["rounds_s"]) == len(one["rounds_s"]) == 3 and got["latency_s"] == big["latency_s"]
    assert one["latency_s"] < 0.012 <= big["latency_s"]  # 8 rows sleep 16 ms, one row 2 ms


def killed_while_building():
    """A worker the OS kills before it answers (an out-of-memory kill, a crash in a native library)."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_before_it_answers_is_reported_not_waited_for():
    t0 = time.perf_counter()
    got = isolated_latency({"gone": (f"{__name__}:killed_while_building", ()), "ok": (f"{__name__}:sleepy", (0.001,))},
                           repeats=2, warmup=0, pause=0.0)
    assert got["gone"] == {"error": "the worker exited (code -9)"}
    assert got["ok"]["latency_s"] >= 0.001 and time.perf_counter() - t0 < 60


class _SlowAfterIdle(nn.Module):
    """Slow on the first call after an idle spell (a CPU waking up), fast on calls back to back."""

    def __init__(self) -> None:
        super().__init__()
        self.last = 0.0

    def forward(self, x):
        time.sleep(0.02 if time.perf_counter() - self.last > 0.015 else 0.001)
        self.last = time.perf_counter()
        return x


def slow_after_idle():
    return _SlowAfterIdle(), [torch.zeros(4), torch.zeros(1)], None


def test_a_burst_times_the_first_call_and_the_warm_ones_apart():
    got = isolated_latency({"m": (f"{__name__}:slow_after_idle", ())}, repeats=3, warmup=1, pause=0.03, batches=2,
                           bursts=(1, 4))["m"]
    once, burst = got["by_batch"]
    assert "warm_latency_s" not in once  # one call a round: nothing to call warm
    assert len(burst["rounds_s"]) == len(burst["warm_rounds_s"]) == 3
    assert burst["latency_s"] >= 0.02 > 0.01 > burst["warm_latency_s"] >= 0.001


def test_past_the_memory_reserve_workers_are_timed_in_groups_beside_the_anchors():
    me = f"{__name__}:"
    factories = {"base": (me + "sleepy", (0.001,)), "a": (me + "sleepy", (0.002,)), "b": (me + "sleepy", (0.003,)),
                 "c": (me + "sleepy", (0.004,))}
    tight = isolated_latency(factories, repeats=3, warmup=0, pause=0.0, anchors=("base",), room=lambda: 0)
    assert [tight[n]["group"] for n in "abc"] == [0, 1, 2]  # no room: the group is timed before the next build
    base = tight["base"]
    assert "group" not in base and len(base["rounds_s"]) == 9  # the anchor runs in all three groups
    for n in "abc":
        paired = tight[n]["paired"]["base"]
        assert len(paired["rounds_s"]) == len(tight[n]["rounds_s"]) == 3  # the anchor's rounds of its own group
        assert set(paired["rounds_s"]) <= set(base["rounds_s"]) and paired["by_batch"][0]["rounds_s"] == paired[
            "rounds_s"]
    roomy = isolated_latency(factories, repeats=2, warmup=0, pause=0.0, anchors=("base",), room=lambda: 1 << 50)
    assert {roomy[n]["group"] for n in "abc"} == {0} and len(roomy["base"]["rounds_s"]) == 2


def test_a_group_keeps_going_when_one_of_its_workers_fails():
    me = f"{__name__}:"
    got = isolated_latency({"base": (me + "sleepy", (0.001,)), "bad": (me + "broken", ()),
                            "crash": (me + "dies", ()), "ok": (me + "sleepy", (0.002,))},
                           repeats=2, warmup=0, pause=0.0, anchors=("base",), room=lambda: 0)
    assert got["bad"] == {"error": "ValueError: cannot build this one"}
    assert got["crash"] == {"error": "the worker exited (code 3)"}
    assert got["ok"]["group"] == 1 and len(got["ok"]["paired"]["base"]["rounds_s"]) == 2
    assert len(got["base"]["rounds_s"]) == 4
