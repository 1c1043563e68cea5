"""Pinned malloc thresholds: a large block freed and allocated again reuses the heap (no new page faults),
where glibc's default would map fresh pages. Run in a child process: the pin is process-wide."""

import subprocess
import sys
import textwrap

import pytest

# malloc itself, not torch.empty: torch asks posix_memalign for n + alignment, and the small blocks Python and torch
# allocate in between decided whether the freed block could take that (a layout-dependent failure, 15 % of runs)
CHILD = textwrap.dedent("""
    import ctypes, json, resource, sys
    from bitladder.pipeline.measure.allocator import steady_allocator

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def fill(n):  # allocated, touched, freed
        p = libc.malloc(n)
        libc.memset(p, 1, n)
        libc.free(p)

    def faults_of_second_fill(n):
        fill(n)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fill(n)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    n = 16 << 20
    default = faults_of_second_fill(n)
    info = steady_allocator()
    faults_of_second_fill(n)  # the first block after pinning grows the heap once
    print(json.dumps({"info": info, "default": default, "pinned": faults_of_second_fill(n)}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tunables are Linux-only")
def test_a_freed_block_is_reused_without_page_faults_once_pinned():
    import json

    out = json.loads(subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    if out["info"]["allocator"] != "glibc":
        pytest.skip("not glibc: nothing to pin")
    pages = (16 << 20) // 4096
    assert out["default"] > pages // 2  # glibc maps a 16 MiB block afresh each time
    assert out["pinned"] < pages // 10 and out["info"]["mmap_threshold"] >= 32 << 20
