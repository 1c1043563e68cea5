"""Kill-and-resume of a recipe's training: ``bitladder compress`` with a checkpointed fine-tune step is SIGKILLed
mid-epoch, run again in the same folder, and ends with exactly the weights of an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

RECIPE = """model: digits
name: ck
steps:
  - finetune: {epochs: 8, lr: 1.0e-3, checkpoint: true}
  - quantize: {rung: int8}
"""


def _compress(recipe: Path, out: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return [sys.executable, "-m", "bitladder.cli.app", "compress", str(recipe), "--out", str(out)], env


def test_a_killed_fine_tune_resumes_to_the_uninterrupted_weights(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    cmd, env = _compress(recipe, tmp_path / "whole")
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
    out = tmp_path / "killed"
    cmd, env = _compress(recipe, out)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "finetune-0.ckpt.safetensors"
    deadline = time.monotonic() + 300
    try:
        while not ckpt.exists():  # the first epoch is written: the kill lands in a later one
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        first = ckpt.stat().st_mtime_ns
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "ck.safetensors").exists()  # killed before the end
    # the rerun reads the checkpoint (a damaged copy of it stops a rerun in a copy of the folder)...
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = bytearray((broken / ckpt.name).read_bytes())
    data[-8:] = bytes(b ^ 0xFF for b in data[-8:])
    (broken / ckpt.name).write_bytes(bytes(data))
    cmd_b, _ = _compress(recipe, broken)
    bad = subprocess.run(cmd_b, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "corrupt" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    # ... and, resumed from it, ends where the uninterrupted run ended
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ckpt.stat().st_mtime_ns > first  # it went on from the checkpoint and wrote later epochs
    whole, resumed = load_file(tmp_path / "whole" / "ck.safetensors"), load_file(out / "ck.safetensors")
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
