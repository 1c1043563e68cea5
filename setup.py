"""The optional C kernels (src/bitladder/kernels/c/). Where no compiler is present the build of the extension
fails quietly and bitladder uses its other kernels (pyproject.toml holds everything else)."""

from setuptools import Extension, setup

_FLAGS = {"extra_compile_args": ["-O3", "-ffp-contract=off", "-std=c11", "-fopenmp"],
          "extra_link_args": ["-fopenmp"], "optional": True}

setup(ext_modules=[Extension(f"bitladder.kernels._{name}", [f"src/bitladder/kernels/c/{name}.c"],
                             depends=["src/bitladder/kernels/c/common.h", "src/bitladder/kernels/c/lowbit_rows.h",
                                      "src/bitladder/kernels/c/lowbit_tiles.h", "src/bitladder/kernels/c/static16.h",
                                      "src/bitladder/kernels/c/static16_bw.h", "src/bitladder/kernels/c/lowbit_tiles512.h",
                                      "src/bitladder/kernels/c/dequant.h", "src/bitladder/kernels/c/xnor.h"], **_FLAGS)
                   for name in ("lowbit", "binlut", "hadamard")])
