"""The same ``fit`` under torchrun: int2 QAT of digits with distillation on 2 processes (DDP, gloo) lands
within 1.5 accuracy points of 1 process, and the two replicas end identical."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitladder.methods.train import ddp

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "ddp_digits.py"


def _why(out: subprocess.CompletedProcess) -> str:
    """The workers' own errors first (torchrun's summary of the failure comes last and says little)."""
    lines = [x for x in out.stderr.splitlines() if "Warning" not in x]
    own = [x for x in lines if "Error" in x or "terminate" in x or x.startswith("[rank")]
    return "\n".join(own[:20] + lines[-10:])


def _torchrun(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run ``python args`` and check it ended well: any worker abort, teardown included, fails the test."""
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, _why(out)
    return out


def _run(*launcher: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    out = _torchrun([*launcher, str(SCRIPT), "--epochs", "8"], env)
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1, out.stdout  # only rank 0 prints
    return lines[0]


def test_two_processes_match_one(digits_spec):  # the fixture trains and caches the fp32 model once
    one = _run()
    two = _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    assert (one["world"], two["world"]) == (1, 2)
    assert one["test_images"] == two["test_images"] == 450
    assert two["replicas_identical"]
    assert one["accuracy"] >= 0.95
    assert abs(one["accuracy"] - two["accuracy"]) * 100 <= 1.5


def test_sharding_and_bad_world_size(monkeypatch):
    w = ddp.World(rank=1, size=3)
    assert ddp.shard(list(range(7)), w) == [1, 4]
    with pytest.raises(ddp.BitladderError, match="2 training batches cannot be shared by 3 processes"):
        ddp.shard([0, 1], w)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ddp.BitladderError, match="WORLD_SIZE must be an integer, got 'two'"):
        ddp.world()


UNEVEN = """
import json, sys, torch
from pathlib import Path
from bitladder.methods.train import ddp
from bitladder.methods.train.qat import QAT, prepare_qat
from bitladder.methods.train.trainer import Train, fit
out = sys.argv[1]
g = torch.Generator().manual_seed(0)
xs = [torch.randn(8, 4, generator=g) for _ in range(3)]  # 3 batches on 2 ranks: 2 and 1
ys = [torch.randint(0, 3, (8,), generator=g) for _ in range(3)]
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
m = prepare_qat(m, QAT(bits="binary", binary_act=True))  # lazy thresholds, and a step no loss uses
losses = []
fit(m, xs, ys, Train(epochs=3, checkpoint=out + "/ck.safetensors", log_dir=out + "/tb"),
    on_epoch=lambda e, loss: losses.append(loss))
w = ddp.world()
flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
lo, hi = flat.clone(), flat.clone()
torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
# one write per line: with PYTHONUNBUFFERED, print() writes the text and its newline separately, and the two
# ranks' lines could interleave on the shared stdout
sys.stdout.write(json.dumps({"rank": w.rank, "same": bool(torch.equal(lo, hi)), "losses": losses}) + "\\n")
ddp.close(w)
# close() ends the group's threads too: left to interpreter exit, a gloo thread that takes the GIL aborts it
threads = [p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")]
assert not [t for t in threads if "gloo" in t], threads
"""


def test_uneven_shards_lazy_thresholds_and_only_rank0_writes(tmp_path):
    script = tmp_path / "uneven.py"
    script.write_text(UNEVEN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = _torchrun(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
                     str(tmp_path)], env)
    rows = sorted((json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in rows] == [0, 1] and all(r["same"] for r in rows)  # (join syncs at epoch ends)
    assert rows[0]["losses"] == rows[1]["losses"] and len(rows[0]["losses"]) == 3  # the loss over all ranks
    assert (tmp_path / "ck.safetensors").exists()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_lazy_thresholds_are_set_before_ddp_broadcasts_rank0s_state():
    import torch

    from bitladder.methods.train.qat import QAT, FakeQuantLayer, prepare_qat

    m = prepare_qat(torch.nn.Sequential(torch.nn.Linear(4, 3)), QAT(bits="binary", binary_act=True))
    layer = m[0]
    assert isinstance(layer, FakeQuantLayer) and not bool(layer.shift_ready)
    x = torch.randn(16, 4)
    ddp._prime(m, x)
    assert bool(layer.shift_ready) and torch.allclose(layer.act_shift, x.mean(0))
    ddp.close(ddp.World())  # one process: nothing to close
    ddp._prime(m, torch.randn(16, 4) + 5)  # already set: left alone
    assert torch.allclose(layer.act_shift, x.mean(0))
    assert "0.shift_ready" in m.state_dict()  # so a training checkpoint records it


RESUME = """
import gc, json, sys, torch
from bitladder.methods.train import ddp
from bitladder.methods.train.trainer import Train, fit
out, stop = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(0)
xs = [torch.randn(8, 4, generator=g) for _ in range(6)]
ys = [torch.randint(0, 3, (8,), generator=g) for _ in range(6)]
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

class Stop(Exception):
    pass

epochs = []

def on_epoch(e, loss):
    epochs.append(e)
    if e + 1 == stop:  # every rank stops after this epoch; its checkpoint is already written
        raise Stop

w = ddp.world()
try:
    fit(m, xs, ys, Train(epochs=4, seed=3, checkpoint=out + "/ck.safetensors", resume=True), on_epoch=on_epoch)
    done = True
except Stop:
    done = False
gc.collect()  # the traceback's frames go now, not at exit after the process group has ended
if w.main:
    weights = [p.detach().reshape(-1).tolist() for p in m.parameters()]
    print(json.dumps({"done": done, "epochs": epochs, "w": weights}))
ddp.close(w)
"""


def test_two_process_run_resumes_to_the_uninterrupted_weights(tmp_path):
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)

    def launch(folder: Path, stop: int) -> dict:
        folder.mkdir(exist_ok=True)
        out = _torchrun(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
                         str(folder), str(stop)], env)
        return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")][0]

    whole = launch(tmp_path / "whole", 0)
    assert whole["done"] and whole["epochs"] == [0, 1, 2, 3]
    assert not launch(tmp_path / "cut", 2)["done"]  # killed after epoch 2 of 4
    resumed = launch(tmp_path / "cut", 0)
    assert resumed["epochs"] == [2, 3]  # it picked up rank 0's checkpoint
    assert resumed["done"] and resumed["w"] == whole["w"]  # bit-identical to the uninterrupted run
