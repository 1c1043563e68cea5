"""The optional C kernels (src/bitladder/kernels/c/). Where no compiler is present the build of the extension
fails quietly and bitladder uses its other kernels (pyproject.toml holds everything else)."""

from setuptools import Extension, setup

_FLAGS = {"extra_compile_args": ["-O3", "-ffp-contract=off", "-std=c11", "-fopenmp"],
          "extra_link_args": ["-fopenmp"], "optional": True}

_HEADERS = ("common.h", "lowbit_rows.h", "lowbit_tiles.h", "static16.h", "static16_bw.h", "lowbit_tiles512.h",
            "dequant.h", "xnor.h", "bf16.h", "features.h")

setup(ext_modules=[Extension(f"bitladder.kernels._{name}", [f"src/bitladder/kernels/c/{name}.c"],
                             depends=[f"src/bitladder/kernels/c/{h}" for h in _HEADERS], **_FLAGS)
                   for name in ("lowbit", "binlut", "hadamard")])
