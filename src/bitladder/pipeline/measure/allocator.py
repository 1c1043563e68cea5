"""Pin glibc malloc's thresholds in a benchmark process, so that a latency ratio does not depend on the run's
allocation history.

glibc serves large blocks with mmap and moves that threshold as blocks are freed, and it returns freed heap
to the system above a trim threshold: the same forward pass then page-faults on fresh memory in one phase of a
run and reuses heap in another, and a latency ratio moves with it (measured: docs/DESIGN.md, 'Benchmarks pin
glibc's malloc thresholds'). Benchmarks and the commands that time models (ladder, compress, tune) call
:func:`steady_allocator` first and record what it returns (:func:`allocated`); the library itself never does.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


#: (mmap, trim) thresholds where glibc's moving ones stop in a long-running 64-bit process (DEFAULT_MMAP_THRESHOLD_MAX,
#: and twice it): what benchmark workers fix after their build, so that a worker's speed does not depend on what
#: its build happened to allocate and free (docs/DESIGN.md, 'Latency')
SETTLED = (32 << 20, 64 << 20)


def steady_allocator(threshold: int = 1 << 30, trim: int | None = None) -> dict:
    """Fix glibc's mmap threshold at ``threshold`` bytes and its trim threshold at ``trim`` (default: the same)
    (Linux with glibc); what was set, for the result file (``{"allocator": "default"}`` where nothing could be)."""
    if not sys.platform.startswith("linux"):
        return {"allocator": "default"}
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others: no glibc tunables
        return {"allocator": "default"}
    for size in (threshold, 32 << 20):  # older glibc caps the mmap threshold at 32 MiB
        keep = size if trim is None else trim
        if libc.mallopt(_M_MMAP_THRESHOLD, size) and libc.mallopt(_M_TRIM_THRESHOLD, keep):
            return {"allocator": "glibc", "mmap_threshold": size, "trim_threshold": keep}
    return {"allocator": "default"}


def allocated(pinned: dict | None) -> dict:
    """A result file's ``allocator`` entry: what :func:`steady_allocator` set, or ``{"allocator": "default"}``
    where nothing was pinned (a library call times under whatever its process set)."""
    return dict(pinned) if pinned else {"allocator": "default"}
