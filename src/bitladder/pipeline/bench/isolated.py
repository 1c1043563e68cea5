"""Latency with every model in its own process, all timed in the same interleaved rounds.

Timed side by side in one process, a model's speed depended on the models timed beside it: the heap a
model finds (grown or trimmed by the one before) decides how many of its new tensors page-fault, enough
to reorder MiniLM W8A8 per token and torch.ao (measured in one process, alone, and in this harness, where
the processes share the rounds: docs/DESIGN.md, 'Latency'). A deployed model has its process to itself, so
each variant gets one: a worker builds it, then runs it on the batch each time the parent asks. The parent
asks every worker in turn, round after round, so a noisy moment of the machine still hits all of them
alike; idle workers wait on a pipe and take no CPU. Each worker also reports the peak resident memory of
its process while serving (once the model is built, the heap its build freed is returned to the OS and the
high-water mark is reset, where glibc and Linux allow it). Then each worker fixes glibc's malloc thresholds where
a long-running process's moving ones end up (:data:`~bitladder.pipeline.measure.allocator.SETTLED`): left moving,
they depend on what the build allocated and freed (a process that has only loaded a model page-faults where one
that quantised it does not); pinned at 1 GiB (:func:`~bitladder.pipeline.measure.allocator.steady_allocator`'s
default), every worker would hold its peak resident at once, more than a whole suite's machine may have
(docs/DESIGN.md, 'Latency').

Even unpinned, a whole MiniLM suite's workers outgrew a 24 GB machine, which then thrashed instead of timing
(docs/results/notes.md, 'A whole suite in 24 GB'). So workers are built while memory allows and timed in groups: when what is left falls under
a reserve (twice the largest build peak so far, at least ``RESERVE_MIN``), the group built so far is timed and
stopped before the next worker starts. The ``anchors`` (the baselines) stay up and run in every group's rounds,
and each other variant carries the anchors' figures from its own group (``paired``), so a ratio never pairs
rounds taken at different times.
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing as mp
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

from bitladder.pipeline.bench.limits import available_bytes
from bitladder.pipeline.measure.allocator import SETTLED, steady_allocator

#: (``"module:function"``, args): called in the worker, it returns ``(model, batch, info)``; ``info`` (any
#: picklable value, e.g. the model's outputs for a fidelity check) is handed back to the parent. ``batch``
#: may be a list of batches (e.g. 32 sentences and one): each round then times every one of them.
Factory = tuple[str, tuple]

#: memory left free for the next worker's build, at the least (the reserve is twice the largest build peak seen)
RESERVE_MIN = 3 << 30


def _hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
    except OSError:
        return None
    return None if m is None else round(int(m.group(1)) / 1024, 1)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _release_freed_memory() -> None:
    """Hand the heap the build freed back to the OS (glibc), so the peak while serving is the model's."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _serve(conn, factory: Factory) -> None:
    import torch

    from bitladder.nn.select import run

    path, args = factory
    module, _, fn = path.partition(":")
    try:
        model, batch, info = getattr(importlib.import_module(module), fn)(*args)
    except Exception as e:  # reported for this variant, the others go on
        conn.send(("error", f"{type(e).__name__}: {str(e)[:160]}" if not isinstance(e, ImportError)
                   else f"not installed: {e.name} (peers: pip install -e '.[bench]')"))
        return
    built = _hwm_mb()  # the build's peak, before the reset: what the next worker's build may need
    gc.collect()
    _release_freed_memory()
    settled = steady_allocator(*SETTLED)  # every worker alike, whatever its build allocated and freed
    reset = _reset_hwm()
    conn.send(("ready", info, built, settled))
    batches = batch if isinstance(batch, list) else [batch]
    with torch.inference_mode():
        while (msg := conn.recv()) != "stop":
            b, times = batches[msg[1]], []
            for _ in range(msg[2]):
                t0 = time.perf_counter()
                run(model, b)
                times.append(time.perf_counter() - t0)
            conn.send(times)
    conn.send(_hwm_mb() if reset else None)


class _Died(Exception):
    pass


def _ask(proc, conn, msg: str | None = None):
    """Send ``msg`` (if any) to a worker and return its answer; a worker that died raises ``_Died``."""
    try:
        if msg is not None:
            conn.send(msg)
        while not conn.poll(1.0):  # a worker killed by the OS must not leave the parent waiting forever
            if not proc.is_alive():
                raise EOFError
        return conn.recv()
    except (EOFError, OSError):
        proc.join(10)
        raise _Died(f"the worker exited (code {proc.exitcode})") from None


def _rounds(live: dict[str, tuple], out: dict, rounds: int, warmup: int, pause: float, batches: int,
            bursts: tuple[int, ...]) -> tuple[dict, dict]:
    """Every live worker once per round, ``pause`` seconds apart: ``(times, warm)``, per name a list per batch of
    the timed rounds' first call and the median of the burst's other calls. A worker that dies leaves ``live``
    with its error in ``out``."""
    times = {k: [[] for _ in range(batches)] for k in live}
    warm = {k: [[] for _ in range(batches)] for k in live}
    for r in range(warmup + rounds):
        for j in range(batches):
            for name, (proc, conn) in list(live.items()):
                time.sleep(pause)
                try:
                    t = _ask(proc, conn, ("run", j, bursts[j]))
                except _Died as e:
                    out[name] = {"error": str(e)}
                    del live[name]
                    continue
                if r >= warmup:
                    times[name][j].append(t[0])
                    if len(t) > 1:
                        warm[name][j].append(statistics.median(t[1:]))
    return times, warm


def _figures(times: list[list[float]], warm: list[list[float]]) -> list[dict[str, Any]]:
    """Per batch: the median of the rounds and the rounds (and the warm calls', where there were any)."""
    return [{"latency_s": statistics.median(t), "rounds_s": t}
            | ({"warm_latency_s": statistics.median(w), "warm_rounds_s": w} if w else {})
            for t, w in zip(times, warm)]


def _stop(name: str, live: dict[str, tuple], out: dict, by: list[dict]) -> None:
    """Stop one worker; its figures (``by``: per batch) and peak resident memory go to ``out[name]``."""
    proc, conn = live.pop(name)
    try:
        peak = _ask(proc, conn, "stop")
    except _Died:
        peak = None
    proc.join(10)
    out[name].update(**by[0], peak_rss_mb=peak, by_batch=by)


def isolated_latency(factories: dict[str, Factory], repeats: int, warmup: int = 2,
                     pause: float = 0.05, batches: int = 1,
                     bursts: tuple[int, ...] | None = None, anchors: tuple[str, ...] = (),
                     room: Callable[[], int] = available_bytes) -> dict[str, dict[str, Any]]:
    """``{name: {"latency_s", "rounds_s", "peak_rss_mb", "info"}}``, or ``{"error"}`` for a variant whose
    build failed or whose worker died (the others go on). ``rounds_s[i]`` of every variant that lived to
    the end was timed in the same round ``i`` as the anchors' rounds it is given, so per-round ratios pair runs
    made under the same load. With ``batches`` > 1 (factories return that many batches) the first batch's
    figures are as above and ``by_batch[j]`` holds ``{"latency_s", "rounds_s"}`` of batch ``j``.

    ``bursts[j]`` > 1 runs batch ``j`` that many times back to back in each round: ``rounds_s`` keeps the
    first call (after the pause: a sporadic request, which on an idle VM also pays the CPU's wake-up), and
    ``warm_rounds_s`` / ``warm_latency_s`` the median of the others (a stream of requests).

    Workers are built one after the other (a later factory may read files an earlier one wrote); while
    ``room()`` bytes stay above the reserve they join one group, then every worker of the group and every
    anchor runs once per round, ``pause`` seconds apart; the latency is the median of ``repeats`` rounds after
    ``warmup``. Each non-anchor variant gets ``group`` (its group's number) and, with ``anchors``,
    ``paired[anchor]``: the anchor's figures in that group's rounds (``by_batch`` as above). An anchor's own
    figures are over all its rounds. Name the anchors first: a group timed before one is built lacks it."""
    ctx = mp.get_context("spawn")
    bursts = tuple(bursts or ()) + (1,) * (batches - len(bursts or ()))
    live: dict[str, tuple] = {}
    out: dict[str, dict[str, Any]] = {}
    kept: dict[str, list[tuple[list, list]]] = {a: [] for a in anchors}  # an anchor's rounds, group by group
    group: list[str] = []
    groups = 0
    largest = 0.0  # the largest build peak so far, MB

    def time_group() -> None:
        nonlocal groups
        times, warm = _rounds(live, out, repeats, warmup, pause, batches, bursts)
        paired = {a: _figures(times[a], warm[a]) for a in anchors if a in live}
        for a in paired:
            kept[a].append((times[a], warm[a]))
        for name in group:
            if name in live:
                out[name].update(group=groups, paired={a: {**p[0], "by_batch": p} for a, p in paired.items()})
                _stop(name, live, out, _figures(times[name], warm[name]))
        group.clear()
        groups += 1

    try:
        for name, factory in factories.items():
            if group and room() < max(RESERVE_MIN, 2 * largest * 2**20):
                time_group()
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, factory), daemon=True)
            proc.start()
            there.close()  # only the worker holds its end: its death is an EOF here
            try:
                msg = _ask(proc, here)
            except _Died as e:
                msg = ("error", str(e))
            if msg[0] == "error":
                out[name] = {"error": msg[1]}
                proc.join(10)
                continue
            live[name] = (proc, here)
            out[name] = {"info": msg[1], "allocator": msg[3]}
            largest = max(largest, msg[2] or 0.0)
            if name not in anchors:
                group.append(name)
        if group or not groups:
            time_group()
        for a in list(live):  # the anchors: every group's rounds
            joined = [[sum((t[j] for t, _ in kept[a]), []), sum((w[j] for _, w in kept[a]), [])]
                      for j in range(batches)]
            _stop(a, live, out, _figures(*zip(*joined)))
    finally:
        for proc, _ in live.values():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    return out


def at_batch(got: dict[str, dict[str, Any]], j: int) -> dict[str, dict[str, Any]]:
    """Per name, the figures of batch ``j`` at the top level (as the first batch's are), and those of its paired
    anchors in ``paired``."""
    per = {}
    for name, g in got.items():
        per[name] = {**g, **(g["by_batch"][j] if "by_batch" in g else {})}  # a new dict: ``got`` stays as it was
        if "paired" in g:
            per[name]["paired"] = {a: p["by_batch"][j] for a, p in g["paired"].items()}
    return per


def baseline(per: dict[str, dict[str, Any]], name: str, anchor: str) -> dict[str, Any]:
    """The figures of ``anchor`` to set against ``name``'s (:func:`at_batch` output): those of ``name``'s own
    timing group where it was paired, else the anchor's own."""
    return per[name].get("paired", {}).get(anchor) or per.get(anchor, {})
