"""fbgemm's 16-bit pair sums, reached on any x86 host through its own cap (``FBGEMM_ENABLE_INSTRUCTIONS``): the
activation grid follows what fbgemm runs, and AVX-VNNI alone (Alder Lake .. Arrow Lake) is not VNNI to fbgemm."""

import os
import subprocess
import sys

import pytest

from bitladder.kernels import cpu

# saturation bait (every other weight at the extreme) through the raw kernel at 255 steps and as built (the
# convolution's weight is the same rows, reshaped to 2 x 4 kernels)
SCRIPT = r"""
import json, torch
from bitladder.formats.layout import Layout
from bitladder.kernels import KERNELS
from bitladder.tensor.quantized import QuantizedTensor
torch.manual_seed(1)
w = torch.randn(64, 512)
w[:, ::2] = w[:, ::2].sign() * w.abs().amax()
qt = QuantizedTensor.from_float(w, "int8", Layout("channel"))
x = torch.rand(8, 512) * 4
ref = x @ qt.dequantize().t()
err = lambda y: float((y - ref).norm() / ref.norm())
out = {}
for name in ("int8-w8a8-fbgemm", "int8-w8a8-fbgemm-token", "int8-w8a8-onednn", "int8-w8a8-onednn-token"):
    k = KERNELS[name].from_qtensor(qt)
    out[name] = {"levels": getattr(k, "levels", 127 if getattr(k, "reduce_range", False) else 255), "err": err(k(x))}
import torch.nn.functional as F
from bitladder.kernels.onednn_conv import OnednnConv2dW8A8
if OnednnConv2dW8A8.available():  # the same bait through oneDNN's int8 convolution
    cq = QuantizedTensor.from_float(w[:32].reshape(32, 64, 2, 4), "int8", Layout("channel"))
    cx = torch.rand(2, 64, 6, 9) * 4
    conv = OnednnConv2dW8A8.from_layer(cq, (1, 1), (0, 0), (1, 1), 1)
    cref = F.conv2d(cx, cq.dequantize(), None, 1, 0, 1)
    out["onednn-conv"] = {"levels": conv.levels, "err": float((conv(cx, None) - cref).norm() / cref.norm())}
raw = KERNELS["int8-w8a8-fbgemm"].from_qtensor(qt)
raw.reduce_range = False
out["fbgemm-255"] = err(raw(x))
from bitladder.kernels.cpu import current
out["onednn-dot32"] = current().dot32("onednn")  # this process's CPU (under qemu's user mode: the host's)
print(json.dumps(out))
"""


def _run(env: dict) -> dict:
    import json

    full = {k: v for k, v in os.environ.items() if k not in ("BITLADDER_CPU", "ONEDNN_MAX_CPU_ISA")}
    full.update(env, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=full, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


needs_fbgemm_avx2 = pytest.mark.skipif(not cpu.current({}).has("avx2"),
                                       reason="fbgemm's 16-bit pair-sum kernels need AVX2 on the host")


@needs_fbgemm_avx2
@pytest.mark.parametrize("env", [
    {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},  # the user's own cap on fbgemm, whatever the host
    {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512"},  # Skylake-SP
    # an AVX2 + AVX-VNNI CPU as its libraries see it: oneDNN uses AVX-VNNI, fbgemm its AVX2 kernels
    {"BITLADDER_CPU": "avx2-vnni", "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
], ids=["fbgemm-avx2", "fbgemm-avx512", "alder-lake"])
def test_fbgemm_without_its_vnni_kernels_gets_7_bit_activations_and_never_saturates(env):
    got = _run(env)
    if cpu.current({}).has("avx512f") or env["FBGEMM_ENABLE_INSTRUCTIONS"] == "AVX2":
        assert got["fbgemm-255"] > 2e-2, got  # the bait does saturate fbgemm here: the check below can fail
    for name in ("int8-w8a8-fbgemm", "int8-w8a8-fbgemm-token"):
        assert got[name]["levels"] == 127 and got[name]["err"] < 1.5e-2, (name, got)
    # oneDNN is exact with the grid it takes: 255 steps on AVX-VNNI where the CPU the script ran on has it
    for name in ("int8-w8a8-onednn", "int8-w8a8-onednn-token", "onednn-conv"):
        if name in got:
            assert got[name]["levels"] == (255 if got["onednn-dot32"] else 127) and got[name]["err"] < 1.5e-2, (
                name, got)
