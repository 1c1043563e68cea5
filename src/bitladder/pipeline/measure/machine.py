"""The ``machine`` object every result file carries: CPU model (and family / model numbers), vendor and ISA
flags, the fp32 GEMM engine dequantising kernels take there (``fp32_gemm``), cores, threads, versions.

The CPU part is :meth:`bitladder.kernels.cpu.Cpu.describe`, so a ``BITLADDER_CPU`` override shows as the
flags in force plus ``bitladder_cpu`` and ``host_flags``; the libraries' own ISA caps, where set, show as
``library_caps`` (a run on a lesser CPU's paths names every cap it ran under). The bench adds what it measured
(:mod:`bitladder.pipeline.bench.limits`): ``read_gbps``, ``fp32_gflops``, ``int8_gops``, and ``llc_bytes``.
"""

from __future__ import annotations

import os
import platform
import shlex
from importlib.metadata import PackageNotFoundError, version

import torch

from bitladder.kernels import fp32_gemm
from bitladder.kernels.cpu import current

#: environment variables that cap a library's own instruction choice (ATen, oneDNN, fbgemm, MKL)
LIBRARY_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS", "MKL_ENABLE_INSTRUCTIONS")

#: distributions whose versions change the figures (read from metadata: nothing is imported for it)
PACKAGES = ("bitladder", "torch", "numpy", "onnxruntime", "onnx", "numba")


def versions() -> dict[str, str]:
    """Python's version and those of the installed ``PACKAGES`` (missing ones left out)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def machine(read_gbps: float | None = None, fp32_gflops: float | None = None,
            int8_gops: float | None = None, llc_bytes: int | None = None) -> dict:
    """This machine as a result file names it; measured limits are added only when given."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cpu = current()
    out = {**cpu.describe(), "fp32_gemm": fp32_gemm.engine(cpu), "cores": cores, "threads": torch.get_num_threads(),
           "versions": versions()}
    caps = {name: os.environ[name] for name in LIBRARY_CAPS if os.environ.get(name)}
    if caps:
        out["library_caps"] = caps
    for key, value in (("read_gbps", read_gbps), ("fp32_gflops", fp32_gflops), ("int8_gops", int8_gops)):
        if value is not None:
            out[key] = round(float(value), 2)
    if llc_bytes is not None:
        out["llc_bytes"] = int(llc_bytes)
    return out


def command(invocation: str, argv: list[str]) -> str:
    """A result file's ``command``: the CPU caps set in the environment (``BITLADDER_CPU`` and
    :data:`LIBRARY_CAPS`), then ``invocation`` and its ``argv`` (quoted for a shell), so the line reruns the
    measurement."""
    caps = [f"{name}={shlex.quote(os.environ[name])}" for name in ("BITLADDER_CPU", *LIBRARY_CAPS)
            if os.environ.get(name)]
    return " ".join([*caps, invocation, *map(shlex.quote, argv)])


def one_line(m: dict) -> str:
    """'AMD EPYC family 25 model 17 (avx2; 2 cores, 2 threads)': the CPU and the flags in force, for reports and
    tables."""
    flags = ", ".join(f for f, on in m.get("flags", {}).items() if on) or "no vector extensions"
    cap = f", BITLADDER_CPU={m['bitladder_cpu']}" if m.get("bitladder_cpu") else ""
    ident = m.get("cpu_id")
    gen = f" family {ident['family']} model {ident['model']}" if ident else ""
    return f"{m.get('cpu', '?')}{gen} ({flags}{cap}; {m.get('cores')} cores, {m.get('threads')} threads)"
