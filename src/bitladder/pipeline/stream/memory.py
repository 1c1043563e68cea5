"""Hand freed heap pages back to the system between the steps of a streamed run.

glibc's ``free`` keeps freed chunks in the middle of the heap resident (only the top is trimmed), and tensors
up to 32 MB live on the heap once a larger one has been freed (glibc raises its mmap threshold), so a block's
freed float weights and GPTQ temporaries stay in the resident set while the next group allocates elsewhere.
``malloc_trim(0)`` returns their pages. Fixing the mmap threshold instead returns them too, but every tensor
then costs fresh page faults: measured twice as slow per block (docs/results/stream-ptq*.json notes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _trim():
    """glibc's ``malloc_trim``, or None where the C library is another (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def give_back() -> None:
    """Return the heap's free pages to the system (a no-op without glibc)."""
    trim = _trim()
    if trim is not None:
        trim(0)
