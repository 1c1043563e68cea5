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
