"""FSDP2 under torchrun (gloo, 2 processes): int2 QAT of digits with distillation lands within the DDP test's
1.5 accuracy points of one process while each rank holds at most 0.6x the parameter + optimiser bytes; a
small QAT student with blocks, scalar steps, a pruned weight, hints and a teacher trains to DDP's weights,
resumes from a DDP checkpoint, pads uneven shards, comes back a plain module equal on both ranks; a stalled
rank ends the job with the waiting rank's one-line error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bitladder.methods.train import fsdp

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "fsdp_digits.py"
LAUNCH = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return env


def _launch(args: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], env=_env(), capture_output=True, text=True, timeout=300,
                         check=False)
    if ok:
        assert out.returncode == 0, "\n".join(x for x in out.stderr.splitlines() if "Warning" not in x)[-3000:]
    return out


def _rows(out: subprocess.CompletedProcess) -> list[dict]:
    return sorted((json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")), key=lambda r: r["rank"])


def test_two_processes_match_one_and_each_holds_half(digits_spec):  # the fixture caches the fp32 model once
    one = json.loads(_launch([str(BENCH), "--epochs", "8"]).stdout.splitlines()[-1])
    two = json.loads(_launch([*LAUNCH, str(BENCH), "--epochs", "8", "--distributed", "fsdp"]).stdout.splitlines()[-1])
    assert (one["world"], two["world"]) == (1, 2) and one["test_items"] == two["test_items"] == 450
    assert two["replicas_identical"] and two["params_plain"]
    assert one["fidelity"] >= 0.95 and abs(one["fidelity"] - two["fidelity"]) * 100 <= 1.5
    whole = one["rank_bytes"][0]
    assert len(two["rank_bytes"]) == 2 and all(0.4 * whole <= b <= 0.6 * whole for b in two["rank_bytes"])
    assert sum(two["param_bytes"]) >= one["param_bytes"][0]  # the shards cover every parameter


SMALL = """
import json, sys, torch
from torch import nn
from bitladder.methods.train import ddp
from bitladder.methods.train.qat import QAT, prepare_qat
from bitladder.methods.train.trainer import Train, fit
out = sys.argv[1]

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(x)

class Stop(Exception):
    pass

def train(mode, n, folder, stop=0):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 4, generator=g) for _ in range(n)]
    ys = [torch.randint(0, 3, (8,), generator=g) for _ in range(n)]
    torch.manual_seed(0)
    teacher = Net()
    with torch.no_grad():
        teacher.blocks[1].weight[:, :3] = 0  # pruned: stays zero through training
    m = prepare_qat(teacher, QAT(bits=4, act_bits=8))  # act_bits: a scalar step per layer (not shardable)
    losses = []

    def on_epoch(e, loss):
        losses.append(loss)
        if e + 1 == stop:
            raise Stop

    cfg = Train(epochs=4, seed=3, distributed=mode, checkpoint=f"{out}/{folder}/ck.safetensors", resume=True,
                hint=0.1, hint_layers=("blocks.?",))
    try:
        fit(m, xs, ys, cfg, teacher=teacher, on_epoch=on_epoch)
    except Stop:
        return {"done": False}
    flat = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    lo, hi = flat.clone(), flat.clone()
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    return {"done": True, "losses": losses, "w": flat.tolist(), "same": bool(torch.equal(lo, hi)),
            "plain": all(type(p) is nn.Parameter for p in m.parameters()) and type(m) is Net,
            "pruned": float(m.blocks[1].layer.weight[:, :3].abs().sum())}

w = ddp.world()
runs = {"fsdp": train("fsdp", 4, "f"), "ddp": train("ddp", 4, "d"),
        "cut": train("ddp", 4, "c", stop=2),  # DDP stops after epoch 2 of 4 (its checkpoint is written)
        "resumed": train("fsdp", 4, "c"),  # FSDP picks up DDP's checkpoint (same format) and shards it
        "uneven": train("fsdp", 5, "u")}  # 3 batches on rank 0; 2 and one padding step on rank 1
sys.stdout.write(json.dumps({"rank": w.rank, **runs}) + "\\n")
ddp.close(w)
"""


def test_fsdp_trains_to_ddps_weights_resumes_a_ddp_checkpoint_and_pads_uneven_shards(tmp_path):
    script = tmp_path / "small.py"
    script.write_text(SMALL)
    rows = _rows(_launch([*LAUNCH, str(script), str(tmp_path)]))  # one launch: torchrun's start-up is most of it
    assert [r["rank"] for r in rows] == [0, 1]
    for r in rows:
        for name in ("fsdp", "ddp", "resumed", "uneven"):
            run = r[name]
            assert run["done"] and run["same"] and run["plain"] and run["pruned"] == 0.0, name
        assert not r["cut"]["done"] and len(r["resumed"]["losses"]) == 2 and len(r["uneven"]["losses"]) == 4
    f, d = torch.tensor(rows[0]["fsdp"]["w"]), torch.tensor(rows[0]["ddp"]["w"])
    assert torch.allclose(f, d, atol=1e-5), float((f - d).abs().max())  # even shards: the same averaged steps
    assert torch.allclose(torch.tensor(rows[0]["resumed"]["w"]), d, atol=1e-5)
    assert rows[0]["uneven"]["losses"] == rows[1]["uneven"]["losses"]  # the loss over all ranks, real steps only


STALL = """
import os, time, torch
from bitladder.methods.train import ddp
from bitladder.methods.train.trainer import Train, fit
xs, ys = [torch.randn(8, 4) for _ in range(4)], [torch.randint(0, 3, (8,)) for _ in range(4)]
m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

def on_epoch(e, loss):
    if e == 1 and os.environ["RANK"] == "1":
        time.sleep(120)  # a stalled rank: rank 0 must not wait for it past the timeout

fit(m, xs, ys, Train(epochs=4, distributed="fsdp", timeout=3), on_epoch=on_epoch)
ddp.close(ddp.world())
"""


def test_a_stalled_rank_ends_the_job_with_the_waiting_ranks_reason(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(STALL)
    out = _launch([*LAUNCH, str(script)], ok=False)  # subprocess.run's timeout (300 s) fails a hang
    assert out.returncode != 0
    errors = [x for x in out.stderr.splitlines() if "bitladder.errors.BitladderError:" in x]
    assert errors and "rank 0: a collective failed, another rank died or stalled (timeout 3 s)" in errors[0], \
        out.stderr[-2000:]


def test_units_are_blocks_then_top_level_children_and_tied_ones_are_left_to_the_parent():
    class LM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.layers = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(2))
            self.norm = torch.nn.LayerNorm(4)
            self.act = torch.nn.ReLU()
            self.head = torch.nn.Linear(4, 10, bias=False)

    m = LM()
    assert fsdp.units(m) == [*m.layers, m.embed, m.norm, m.head]  # ReLU has no parameters
    m.head.weight = m.embed.weight  # tied: both uses must be in one unit, the root's
    assert fsdp.units(m) == [*m.layers, m.norm]
    r = fsdp.FSDPRunner.__new__(fsdp.FSDPRunner)
    assert r.steps([2, 0], 3) == [(2, 1.0), (0, 1.0), (2, 0.0)]  # padded to the longest rank at weight 0


@pytest.mark.slow
def test_tinylm_int4_distillation_on_two_ranks_matches_one_at_half_the_bytes():
    args = [str(BENCH), "--model", "tinylm", "--epochs", "2", "--bits", "4", "--lr", "1e-3"]
    one = json.loads(_launch(args).stdout.splitlines()[-1])
    two = json.loads(_launch([*LAUNCH, *args, "--distributed", "fsdp"]).stdout.splitlines()[-1])
    assert two["replicas_identical"] and two["params_plain"] and one["test_items"] == two["test_items"]
    assert one["fidelity"] >= 0.85 and abs(one["fidelity"] - two["fidelity"]) * 100 <= 1.5
    assert all(b <= 0.6 * one["rank_bytes"][0] for b in two["rank_bytes"])


RECIPE = """model: digits
distributed: {mode: ddp}
steps:
  - quantize: {rung: int4-g32, include: ["features.*"]}
  - lowbit: {bits: 2, include: ["classifier.*"]}
  - distill: {epochs: 2, lr: 2.0e-3}
  - evaluate: {}
"""


@pytest.mark.slow
def test_compress_under_torchrun_with_fsdp_from_the_command_line(tmp_path, digits_spec):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)  # packed int4 features (frozen) and a QAT classifier, sharded together
    bitladder = Path(sys.executable).parent / "bitladder"
    out = subprocess.run([str(bitladder.parent / "torchrun"), "--standalone", "--nproc-per-node", "2", "--no-python",
                          str(bitladder), "compress", str(recipe), "--out", str(tmp_path / "o"), "--distributed",
                          "fsdp"], env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["recipe"]["steps"][2]["distill"]["distributed"] == "fsdp"  # the option overrode the recipe's ddp
    assert res["rungs"][0]["fidelity"] >= 0.95
