"""Pipeline evaluation of tinylm under ``torchrun --nproc-per-node 2`` (gloo): the last stage's outputs equal one
process's, bit for bit on the same micro-batches and within 1e-5 of the logits' scale on whole batches, for the
float and the int4 artifact; a rank whose peer hangs stops at the timeout, naming itself."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import bitladder
from bitladder import Int
from bitladder.pipeline.parallel.evaluate import _pad
from bitladder.zoo import causal_lm

PIPE = """
import json, sys
from safetensors.torch import save_file
from bitladder.methods.train import ddp
from bitladder.pipeline.parallel import Pipeline, evaluate_pipelined
from bitladder.pipeline.parallel.world import open_world
from bitladder.zoo import causal_lm
out = sys.argv[1]
batches = causal_lm.blocks(causal_lm.encode(causal_lm.corpus.eval_sentences(40)), batch=6)
w = open_world(2, 120)  # the caller's group: both evaluations share it
for kind in ("fp32", "int4"):
    r = evaluate_pipelined(f"{out}/{kind}.safetensors", batches, Pipeline(2, microbatches=3))
    if r.outputs is not None:
        save_file({"out": r.outputs}, f"{out}/{kind}-pipe.safetensors")
    sys.stdout.write(json.dumps({"rank": w.rank, "kind": kind, "stages": r.stages}) + "\\n")
ddp.close(w)
"""

HANG = """
import json, sys, time
from bitladder.errors import BitladderError
from bitladder.pipeline.parallel import Pipeline, evaluate_pipelined
from bitladder.pipeline.parallel.world import open_world
from bitladder.zoo import causal_lm
w = open_world(2, 5)
if w.rank == 0:
    time.sleep(120)  # a stage that never sends
batches = causal_lm.blocks(causal_lm.encode(causal_lm.corpus.eval_sentences(8)), batch=2)
t0 = time.monotonic()
try:
    evaluate_pipelined(sys.argv[1], batches, Pipeline(2, timeout_s=5))
except BitladderError as e:
    sys.stdout.write(json.dumps({"error": str(e), "waited": time.monotonic() - t0}) + "\\n")
    sys.exit(2)
"""


def _torchrun(tmp_path, script: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "script.py").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(tmp_path / "script.py"), *args], env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def _json(out: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]


def test_two_stages_equal_one_process_float_and_int4(tmp_path):
    bitladder.save(causal_lm.pretrained(), tmp_path / "fp32.safetensors", source="tinylm")
    bitladder.save(bitladder.quantize(causal_lm.pretrained(), Int(bits=4, group=32)), tmp_path / "int4.safetensors",
                   source="tinylm")
    out = _torchrun(tmp_path, PIPE, str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _json(out)
    assert sorted((r["rank"], r["kind"]) for r in rows) == [(0, "fp32"), (0, "int4"), (1, "fp32"), (1, "int4")]
    stages = next(r["stages"] for r in rows if r["kind"] == "int4")
    assert [s["units"] for s in stages] == [[0, 2], [2, 4]] and all(s["peak_rss_mb"] > 0 for s in stages)
    batches = causal_lm.blocks(causal_lm.encode(causal_lm.corpus.eval_sentences(40)), batch=6)
    assert len(batches) > 1 and batches[-1].shape[0] < 6  # a short last batch: padded to the micro-batch shape
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker
    try:
        for kind in ("fp32", "int4"):
            model = bitladder.load(tmp_path / f"{kind}.safetensors")
            pipe = load_file(str(tmp_path / f"{kind}-pipe.safetensors"))["out"]
            with torch.no_grad():
                whole = torch.cat([model(b) for b in batches])
                same_micro = torch.cat([torch.cat([model(c) for c in _pad(b, 6).chunk(3)])[: len(b)] for b in batches])
            assert pipe.shape == whole.shape == (sum(len(b) for b in batches), 128, 256)
            assert torch.equal(pipe, same_micro), kind  # the same operations on the same tensors
            # whole batches run GEMMs of other heights: float rounding only
            assert (pipe - whole).abs().max() <= 1e-5 * whole.abs().max(), kind
    finally:
        torch.set_num_threads(before)


def test_a_silent_peer_ends_the_job_at_the_timeout_with_rank_and_reason(tmp_path):
    path = bitladder.save(causal_lm.pretrained(), tmp_path / "fp32.safetensors", source="tinylm")
    out = _torchrun(tmp_path, HANG, str(path))
    assert out.returncode != 0
    rows = _json(out)
    assert len(rows) == 1, out.stdout + out.stderr[-2000:]
    assert rows[0]["error"].startswith("rank 1 (stage 2 of 2) stopped: RuntimeError: Timed out waiting 5000ms"), rows[0]
    assert 4 <= rows[0]["waited"] <= 60, rows[0]
