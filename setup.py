"""The optional C kernels (src/bitladder/kernels/c/). Where no compiler is present the build of the extension
fails quietly and bitladder uses its other kernels (pyproject.toml holds everything else)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("bitladder.kernels._lowbit", ["src/bitladder/kernels/c/lowbit.c"],
                             extra_compile_args=["-O3", "-ffp-contract=off", "-std=c11", "-fopenmp"],
                             extra_link_args=["-fopenmp"], optional=True)])
