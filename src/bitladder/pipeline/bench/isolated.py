"""Latency with every model in its own process, all timed in the same interleaved rounds.

Timed side by side in one process, a model's speed depended on the models timed beside it: the heap a
model finds (grown or trimmed by the one before) decides how many of its new tensors page-fault, enough
to reorder MiniLM W8A8 per token and torch.ao (measured in one process, alone, and in this harness, where
the processes share the rounds: docs/DESIGN.md, 'Latency'). A deployed model has its process to itself, so
each variant gets one: a worker builds it, then runs it on the batch each time the parent asks. The parent
asks every worker in turn, round after round, so a noisy moment of the machine still hits all of them
alike; idle workers wait on a pipe and take no CPU. Each worker also reports the peak resident memory of
its process while serving (once the model is built, the heap its build freed is returned to the OS and the
high-water mark is reset, where glibc and Linux allow it). Workers keep glibc's default malloc thresholds:
pinned (:func:`~bitladder.pipeline.measure.allocator.steady_allocator`), every worker would hold its peak
resident at once, more than a whole suite's machine may have (docs/DESIGN.md, 'Latency').
"""

from __future__ import annotations

import gc
import importlib
import multiprocessing as mp
import re
import statistics
import time
from typing import Any

#: (``"module:function"``, args): called in the worker, it returns ``(model, batch, info)``; ``info`` (any
#: picklable value, e.g. the model's outputs for a fidelity check) is handed back to the parent. ``batch``
#: may be a list of batches (e.g. 32 sentences and one): each round then times every one of them.
Factory = tuple[str, tuple]


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
    gc.collect()
    _release_freed_memory()
    reset = _reset_hwm()
    conn.send(("ready", info))
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


def isolated_latency(factories: dict[str, Factory], repeats: int, warmup: int = 2,
                     pause: float = 0.05, batches: int = 1,
                     bursts: tuple[int, ...] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {"latency_s", "rounds_s", "peak_rss_mb", "info"}}``, or ``{"error"}`` for a variant whose
    build failed or whose worker died (the others go on). ``rounds_s[i]`` of every variant that lived to
    the end was timed in the same round ``i``, so per-round ratios pair runs made under the same load.
    With ``batches`` > 1 (factories return that many batches) the first batch's figures are as above and
    ``by_batch[j]`` holds ``{"latency_s", "rounds_s"}`` of batch ``j``.

    ``bursts[j]`` > 1 runs batch ``j`` that many times back to back in each round: ``rounds_s`` keeps the
    first call (after the pause: a sporadic request, which on an idle VM also pays the CPU's wake-up), and
    ``warm_rounds_s`` / ``warm_latency_s`` the median of the others (a stream of requests).

    Workers are built one after the other (a later factory may read files an earlier one wrote), then
    every worker runs once per round, ``pause`` seconds apart; the latency is the median of ``repeats``
    rounds after ``warmup``."""
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple] = {}
    out: dict[str, dict[str, Any]] = {}
    try:
        for name, factory in factories.items():
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(there, factory), daemon=True)
            proc.start()
            there.close()  # only the worker holds its end: its death is an EOF here
            try:
                kind, info = _ask(proc, here)
            except _Died as e:
                kind, info = "error", str(e)
            if kind == "error":
                out[name] = {"error": info}
                proc.join(10)
                continue
            workers[name] = (proc, here)
            out[name] = {"info": info}
        bursts = tuple(bursts or ()) + (1,) * (batches - len(bursts or ()))
        times: dict[str, list[list[float]]] = {k: [[] for _ in range(batches)] for k in workers}
        warm: dict[str, list[list[float]]] = {k: [[] for _ in range(batches)] for k in workers}
        for r in range(warmup + repeats):
            for j in range(batches):
                for name, (proc, conn) in list(workers.items()):
                    time.sleep(pause)
                    try:
                        t = _ask(proc, conn, ("run", j, bursts[j]))
                    except _Died as e:
                        out[name] = {"error": str(e)}
                        del workers[name]
                        continue
                    if r >= warmup:
                        times[name][j].append(t[0])
                        if len(t) > 1:
                            warm[name][j].append(statistics.median(t[1:]))
        for name, (proc, conn) in list(workers.items()):
            try:
                peak = _ask(proc, conn, "stop")
            except _Died:
                peak = None
            by = [{"latency_s": statistics.median(t), "rounds_s": t}
                  | ({"warm_latency_s": statistics.median(w), "warm_rounds_s": w} if w else {})
                  for t, w in zip(times[name], warm[name])]
            out[name].update(**by[0], peak_rss_mb=peak, by_batch=by)
    finally:
        for proc, _ in workers.values():
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
    return out
