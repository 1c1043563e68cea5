"""Resident memory each Linear kernel adds to a quantised layer, against the layer's stored bytes and fp32.

    OMP_NUM_THREADS=2 python benchmarks/kernel_memory.py [--json docs/results/kernel-memory-avx2.json]

A quantised layer stores its packed codes and scales (``stored_bytes``); the kernel it runs on repacks them
once into its own layout and keeps that (onnxruntime sessions also keep their own copy and a prepacked one).
Each row builds ``LAYERS`` layers of one shape and format in a fresh process, pins one kernel policy (or
``auto`` over a sequence of row counts, the way a served model meets them), runs them, returns freed heap
to the system (``malloc_trim``) and reports the anonymous resident memory added per layer
(``resident_bytes``), after one small layer has paid each backend's one-time costs (numba's runtime,
onnxruntime's environment) with the same policy. The ``auto`` rows show what a layer holds after meeting several batch sizes: every
kernel it was picked for stays cached.

``builds``: one LM-head-sized layer (32000 x 2048, int4 g64, 33 MB stored) per process, one kernel policy:
the peak resident memory its first call reached above the process before it (``VmHWM`` after
``/proc/self/clear_refs``: the kernel's build, its repacked copies in flight and the call's output), and
what stays held after ``malloc_trim``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = 4
CASES = [  # (shape, rung, policy, row counts met)
    *[((4096, 4096), "int4-g64", p, r) for p, r in (("c-lowbit-a8", (1,)), ("ort-nbits", (16,)),
                                                     ("ort-nbits-fp32", (300,)), ("numba-dequant-fp32", (1024,)),
                                                     ("auto", (1, 16, 300, 1024)))],
    *[((4096, 4096), "int8", p, r) for p, r in (("c-lowbit-a8", (1,)), ("fbgemm-fp16-codes", (300,)),
                                                 ("int8-w8a8-token", (300,)), ("numba-dequant-fp32", (1024,)),
                                                 ("auto", (1, 16, 300, 1024)))],
]


BUILDS = [("c-lowbit-a8", 1), ("ort-nbits", 8), ("ort-nbits-fp32", 256), ("numba-dequant-fp32", 600)]


def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def build_child(policy: str, rows: int) -> dict:
    import torch

    import bitladder

    torch.manual_seed(0)
    q = bitladder.quantize(torch.nn.Sequential(torch.nn.Linear(2048, 32000, bias=False)), bitladder.Int(4, group=64),
                           inplace=True)[0]
    stored = sum(t.numel() * t.element_size() for t in q.state_dict().values())
    q.set_kernel_policy(policy)
    x = torch.randn(rows, 2048)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # the high-water mark restarts here
        f.write("5")
    with torch.inference_mode():
        q(x)
    peak = _status_mb("VmHWM") - before
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"shape": [32000, 2048], "rung": "int4-g64", "variant": policy, "rows": rows, "kernel": q.kernel,
            "stored_bytes": stored, "build_peak_bytes": int(peak * 2**20),
            "resident_bytes": int((_status_mb("VmRSS") - before) * 2**20)}


def _anon_mb() -> float:
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: what remains is held
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def child(shape: list[int], rung: str, policy: str, rows: list[int]) -> dict:
    import torch

    import bitladder
    from bitladder.pipeline.ladder.rungs import parse_rungs

    torch.manual_seed(0)
    n, k = shape
    model = torch.nn.Sequential(*[torch.nn.Linear(k, n) for _ in range(LAYERS)])
    q = bitladder.quantize(model, parse_rungs([rung])[rung], inplace=True)
    del model
    stored = sum(t.numel() * t.element_size() for t in q.state_dict().values()) / LAYERS
    warm = bitladder.quantize(torch.nn.Sequential(torch.nn.Linear(k, 256)), parse_rungs([rung])[rung])
    if policy != "auto":
        for m in [*q, *warm]:
            m.set_kernel_policy(policy)
    with torch.inference_mode():  # the backends' one-time costs (numba's JIT runtime, onnxruntime's environment)
        for r in rows:
            warm(torch.randn(r, k))
    before = _anon_mb()
    kernels = []
    with torch.inference_mode():
        for r in rows:
            x = torch.randn(r, k)
            for m in q:
                m(x)
            kernels.append(q[0].kernel)
            del x
    held = (_anon_mb() - before) * 2**20 / LAYERS
    return {"shape": shape, "rung": rung, "variant": policy, "rows": rows, "kernels": kernels,
            "stored_bytes": int(stored), "resident_bytes": int(held), "bytes_fp32": n * k * 4 + n * 4,
            "resident_vs_stored": round(held / stored, 2), "resident_vs_fp32": round(held / (n * k * 4 + n * 4), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", nargs=4, metavar=("SHAPE", "RUNG", "POLICY", "ROWS"))
    ap.add_argument("--build-child", nargs=2, metavar=("POLICY", "ROWS"))
    a = ap.parse_args()
    if a.build_child:
        print(json.dumps(build_child(a.build_child[0], int(a.build_child[1]))))
        return
    if a.child:
        shape, rung, policy, rows = a.child
        print(json.dumps(child(json.loads(shape), rung, policy, json.loads(rows))))
        return
    from bitladder.pipeline.measure.machine import machine

    rows = []
    for shape, rung, policy, met in CASES:
        res = subprocess.run([sys.executable, __file__, "--child", json.dumps(list(shape)), rung, policy,
                              json.dumps(list(met))], capture_output=True, text=True)
        row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {
            "shape": list(shape), "rung": rung, "variant": policy, "error": res.stderr.strip().splitlines()[-1][:200]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    builds = []
    for policy, n in BUILDS:
        res = subprocess.run([sys.executable, __file__, "--build-child", policy, str(n)], capture_output=True, text=True)
        row = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {
            "variant": policy, "error": res.stderr.strip().splitlines()[-1][:200]}
        print(json.dumps(row), flush=True)
        builds.append(row)
    out = {"schema": "bitladder.kernel-memory/1", "command": " ".join(["python", *sys.argv]), "machine": machine(),
           "layers_per_process": LAYERS, "rows": rows, "builds": builds}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
