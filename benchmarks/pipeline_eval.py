"""Pipeline-parallel evaluation of a random Llama of ~3 GB: peak RSS of each of 2 stages against one process.

    python benchmarks/pipeline_eval.py [--layers 12] [--json docs/results/pipeline-eval.json]

Writes a float and an int4 (RTN, group 64) artifact of the same random model to a temporary folder, then runs
each three ways, every run a fresh process with one thread: ``bitladder.load`` of the whole model, the
pipeline loader as one stage (the same code with the whole model), and ``torchrun --nproc-per-node 2`` with
two stages. Each reports ``ru_maxrss``; the outputs of the three are compared on the same token batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, FFN, HEADS = 32000, 2048, 5632, 16
BATCHES, ROWS, TOKENS = 2, 4, 64


def factory(layers: int | None = None):
    """The random Llama's float architecture (layers from $PIPE_LAYERS when not given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bitladder.zoo.causal_lm import CausalLM

    n = layers or int(os.environ["PIPE_LAYERS"])
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=n,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=256,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg._attn_implementation = "sdpa"
    return CausalLM(LlamaForCausalLM(cfg)).eval()


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (ROWS, TOKENS), generator=g) for _ in range(BATCHES)]


def make(folder: Path) -> None:
    import bitladder
    from bitladder import Int

    torch.manual_seed(0)
    model = factory()
    bitladder.save(model, folder / "fp32.safetensors")
    bitladder.save(bitladder.quantize(model, Int(bits=4, group=64)), folder / "int4.safetensors")


def _emit(row: dict, outputs: torch.Tensor | None, out: str) -> None:
    from safetensors.torch import save_file

    if outputs is not None:
        save_file({"out": outputs.contiguous()}, out)
    sys.stdout.write(json.dumps(row) + "\n")


def whole(artifact: str, out: str) -> None:
    import bitladder
    from bitladder.pipeline.parallel.evaluate import peak_rss_mb

    t0 = time.perf_counter()
    model = bitladder.load(artifact, model=factory())
    with torch.no_grad():
        outputs = torch.cat([model(b).float() for b in batches()])
    _emit({"peak_rss_mb": peak_rss_mb(), "time_s": time.perf_counter() - t0}, outputs, out)


def staged(artifact: str, out: str, stages: int) -> None:
    from bitladder.pipeline.parallel import Pipeline, evaluate_pipelined

    t0 = time.perf_counter()
    r = evaluate_pipelined(artifact, batches(), Pipeline(stages, microbatches=2), factory=factory)
    if r.last:
        _emit({"stages": r.stages, "time_s": time.perf_counter() - t0}, r.outputs, out)


def _child(args: list[str], env: dict, torchrun: bool = False) -> dict:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if torchrun \
        else [sys.executable]
    out = subprocess.run([*launcher, __file__, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{args[0]} failed:\n{out.stderr[-3000:]}")
    return [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "pipeline-eval.json")
    args = ap.parse_args()
    from safetensors.torch import load_file

    from bitladder.pipeline.measure.machine import machine

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPE_LAYERS": str(args.layers), "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        subprocess.run([sys.executable, __file__, "make", tmp], env=env, check=True, capture_output=True)
        for kind in ("fp32", "int4"):
            art = str(d / f"{kind}.safetensors")
            size = Path(art).stat().st_size
            one = _child(["whole", art, str(d / "whole.st")], env)
            single = _child(["staged", art, str(d / "single.st"), "1"], env)
            pipe = _child(["staged", art, str(d / "pipe.st"), "2"], env, torchrun=True)
            ref, alone, piped = (load_file(str(d / f))["out"] for f in ("whole.st", "single.st", "pipe.st"))
            base = single["stages"][0]["peak_rss_mb"]
            diff = float((piped - ref).abs().max())
            common = {"model": f"random Llama, {args.layers} layers, {kind}", "bytes_on_disk": size}
            rows.append({**common, "variant": "1 process, bitladder.load", "peak_rss_mb": round(one["peak_rss_mb"], 1),
                         "rss_ratio": round(one["peak_rss_mb"] / base, 3), "time_s": round(one["time_s"], 1)})
            rows.append({**common, "variant": "1 process, pipeline loader (1 stage)", "peak_rss_mb": round(base, 1),
                         "rss_ratio": 1.0, "time_s": round(single["time_s"], 1),
                         "equal_to_load": bool(torch.equal(alone, ref))})
            for i, s in enumerate(pipe["stages"]):
                rows.append({**common, "variant": f"2 stages, rank {i} (units {s['units'][0]}-{s['units'][1] - 1})",
                             "stage_bytes": s["bytes"], "peak_rss_mb": s["peak_rss_mb"],
                             "rss_ratio": round(s["peak_rss_mb"] / base, 3), "time_s": round(pipe["time_s"], 1),
                             "max_abs_diff": diff, "max_abs_output": float(ref.abs().max()),
                             "target_met": s["peak_rss_mb"] <= 0.6 * base})
    cmd = ["python", "benchmarks/pipeline_eval.py", "--layers", str(args.layers)]
    result = {"schema": "bitladder.pipeline-eval/1", "command": shlex.join(cmd), "machine": machine(),
              "note": "one run on a shared, noisy machine; RSS is ru_maxrss of each process (KiB / 1024); "
                      "rss_ratio is against the pipeline loader in one process (the same loading code); "
                      "max_abs_diff: 2-stage outputs (2 micro-batches) against bitladder.load on whole batches",
              "rows": rows}
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "make":
        make(Path(sys.argv[2]))
    elif mode == "whole":
        whole(sys.argv[2], sys.argv[3])
    elif mode == "staged":
        staged(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
