"""The C kernels build quietly optional (setup.py): where a compiler is present they must have been built, or a
broken C file would only show as skipped tests."""

import shutil
import sys

import pytest

from bitladder.kernels import hadamard
from bitladder.kernels.c_binlut import CBinaryLutKernel
from bitladder.kernels.c_lowbit import CLowbitKernel


@pytest.mark.skipif(not sys.platform.startswith("linux") or not (shutil.which("gcc") or shutil.which("cc")),
                    reason="no C compiler: the kernels are optional here")
def test_every_c_kernel_was_built_where_a_compiler_is():
    assert CLowbitKernel.installed(), "bitladder.kernels._lowbit did not build (pip install -e . -v shows why)"
    assert CBinaryLutKernel.installed(), "bitladder.kernels._binlut did not build"
    assert hadamard.installed(), "bitladder.kernels._hadamard did not build"


def test_an_in_tree_build_is_newer_than_its_c_sources():
    # an edited C file that no longer compiles leaves the old module in place, and pip still reports success
    from pathlib import Path

    import bitladder.kernels as pkg

    folder = Path(pkg.__file__).parent
    sources = folder / "c"
    if not sources.is_dir():
        pytest.skip("an installed wheel: no C sources beside the modules")
    headers = max(p.stat().st_mtime for p in sources.glob("*.h"))
    for name in ("lowbit", "binlut", "hadamard"):
        built = list(folder.glob(f"_{name}.*.so")) + list(folder.glob(f"_{name}.*.pyd"))
        if not built:
            continue  # not built here: the test above says whether it should have been
        newest = max(headers, (sources / f"{name}.c").stat().st_mtime)
        assert max(p.stat().st_mtime for p in built) >= newest, (
            f"bitladder/kernels/_{name} is older than its C sources: rebuild (pip install -e . --no-deps -v), "
            "which shows the compiler's error if there is one")
