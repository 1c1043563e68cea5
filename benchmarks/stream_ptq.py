"""Streamed GPTQ W4 of a Llama-style checkpoint 3x larger than a memory cap, against the in-memory path.

1. A random Llama-style model of about 1.2 GB fp32 (22 blocks, hidden 1024, SwiGLU 2816, vocabulary 8192, 64 positions) is
   saved as 4+ safetensors shards in a temporary folder (not the repository).
2. ``stream_quantize`` (GPTQ, int4, groups of 64) runs on it in a child process that first imports everything the
   run uses (torch, bitladder, transformers' Llama classes: about 400 MB resident before any weight exists),
   then caps its private data with ``RLIMIT_DATA`` at the imports' plus ``--cap-mb`` (default 400 MB: the model
   is 3x that). The cap covers the heap and anonymous mappings, i.e. every weight, activation and Hessian;
   shards are read with plain reads (``bitladder.io.st_read``), so no shard mapping counts against it. The
   child reports its peak RSS (``ru_maxrss``, imports included) and the RSS the imports took.
3. A smaller model of the same family (``--small-layers`` blocks) is quantised both ways in separate child
   processes, timed from after the imports: the artifacts' sha256 must match, and the time ratio is reported.

The vocabulary is 8192, not 32000: the LM head is one layer, quantised whole, so its float weight and its int32
codes (131 MB each for 32000 x 1024) would measure the head rather than streaming.

    OMP_NUM_THREADS=2 python benchmarks/stream_ptq.py --out docs/results/stream-ptq.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILY = {"hidden_size": 1024, "intermediate_size": 2816, "num_attention_heads": 16, "num_key_value_heads": 16,
          "vocab_size": 8192, "max_position_embeddings": 64, "tie_word_embeddings": False}


def _vm(field: str) -> float:
    """A /proc/self/status field in MB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def make(folder: str, layers: int, shard: str, vocab: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.no_grad():
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **{**FAMILY, "vocab_size": vocab}))
    model.save_pretrained(folder, max_shard_size=shard)


def child(mode: str, folder: str, out: str, calib: int, cap_mb: float) -> dict:
    import torch
    from transformers import LlamaForCausalLM  # noqa: F401  (imported before the baseline, as the run needs it)

    import bitladder
    from bitladder.io.artifact import save
    from bitladder.pipeline.stream.run import stream_quantize
    from bitladder.zoo import hf_folder

    config = bitladder.Int(4, group=64, method=bitladder.GPTQ())
    batches = hf_folder.calibration(Path(folder), calib, 8)
    base_rss, base_data = _vm("VmRSS"), _vm("VmData")
    if cap_mb:
        cap = int((base_data + cap_mb) * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    t0 = time.perf_counter()
    blocks = []

    def on_block(i: int, n: int, s: float) -> None:  # progress survives a timeout of the parent
        blocks.append(round(s, 2))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with open(out + ".progress", "a") as f:
            f.write(json.dumps({"block": i, "of": n, "s": round(s, 2), "peak_rss_mb": round(rss),
                                "import_rss_mb": round(base_rss)}) + "\n")

    if mode == "stream":
        stream_quantize(folder, config, batches, out, on_block=on_block)
    else:
        model = hf_folder.build(folder)
        save(bitladder.quantize(model, config, calib=batches, inplace=True), out, source=hf_folder.source_of(folder),
             config=config.to_dict())
    wall = time.perf_counter() - t0
    return {"mode": mode, "wall_s": round(wall, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "import_rss_mb": round(base_rss), "import_data_mb": round(base_data), "cap_data_mb": cap_mb or None,
            "block_s": blocks, "sha256": hashlib.sha256(Path(out).read_bytes()).hexdigest(),
            "artifact_bytes": Path(out).stat().st_size, "threads": torch.get_num_threads()}


def run_child(*args: str, timeout: float | None = None) -> dict:
    try:
        res = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:  # report how far it got
        lines = Path(args[2] + ".progress").read_text().splitlines() if Path(args[2] + ".progress").exists() else []
        return {"mode": args[0], "timed_out_after_s": timeout, "blocks_done": [json.loads(x) for x in lines]}
    if res.returncode:
        raise SystemExit(f"child {args[0]} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def folder_bytes(folder: Path) -> tuple[int, int]:
    shards = list(folder.glob("*.safetensors"))
    return sum(p.stat().st_size for p in shards), len(shards)


def summarise(res: dict) -> dict:
    """Top-level figures and one row per run, for docs/RESULTS.md."""
    small, big = res.get("small", {}), res.get("big", {})
    rows = [{"case": f"{small.get('layers')} blocks, {name}", "bytes_fp32": small.get("fp32_bytes"), "time_s": r["wall_s"],
             "bytes_on_disk": r["artifact_bytes"]} for name, r in (("in memory", small.get("in_memory")),
                                                                    ("streamed", small.get("streamed"))) if r]
    run = big.get("streamed", {})
    if "wall_s" in run:
        cap = f"under an RLIMIT_DATA cap of imports + {run['cap_data_mb']:.0f} MB" if run.get("cap_data_mb") else "no cap"
        rows.append({"case": f"{big['layers']} blocks, streamed ({cap})", "bytes_fp32": big["fp32_bytes"],
                     "time_s": run["wall_s"], "bytes_on_disk": run["artifact_bytes"]})
    res["rows"] = rows
    res["small_bit_identical"] = small.get("bit_identical")
    res["small_time_ratio_stream_over_memory"] = small.get("time_ratio_stream_over_memory")
    done = run.get("blocks_done") or []
    res["big_fp32_bytes"], res["big_shards"] = big.get("fp32_bytes"), big.get("shards")
    res["big_peak_rss_mb"] = run.get("peak_rss_mb", done[-1]["peak_rss_mb"] if done else None)
    res["big_import_rss_mb"] = run.get("import_rss_mb", done[-1]["import_rss_mb"] if done else None)
    res["big_cap_data_mb_beyond_imports"] = run.get("cap_data_mb")
    res["big_blocks_done"] = len(run.get("block_s") or done)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=5, metavar=("MODE", "FOLDER", "OUT", "CALIB", "CAP_MB"))
    ap.add_argument("--make", nargs=4, metavar=("FOLDER", "LAYERS", "SHARD", "VOCAB"), help="(internal) write a random model")
    ap.add_argument("--vocab", type=int, default=FAMILY["vocab_size"], help="vocabulary (a real Llama's: 32000)")
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--small-layers", type=int, default=4)
    ap.add_argument("--calib", type=int, default=16, help="calibration rows of 128 tokens")
    ap.add_argument("--cap-mb", type=float, default=400, help="RLIMIT_DATA of the big run beyond the imports (0: none)")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--timeout", type=float, default=None, help="seconds for the big run (then: blocks done so far)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--note", default="one run each", help="how the machine was (quiet, shared) for the result file")
    a = ap.parse_args()
    if a.make:
        make(a.make[0], int(a.make[1]), a.make[2], int(a.make[3]))
        return
    if a.child:
        mode, folder, out, calib, cap = a.child
        print(json.dumps(child(mode, folder, out, int(calib), float(cap))))
        return
    from bitladder.pipeline.measure.machine import machine

    res: dict = {"schema": "bitladder.stream-ptq/1", "command": " ".join(["python", *sys.argv]), "config": "int4-g64-gptq",
                 "family": {**FAMILY, "vocab_size": a.vocab}, "calib_rows": a.calib, "tokens_per_row": FAMILY["max_position_embeddings"], "machine": machine(),
                 "note": a.note}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        small = tmp / "small"
        if not a.skip_small:
            subprocess.run([sys.executable, __file__, "--make", str(small), str(a.small_layers), "60MB", str(a.vocab)], check=True)
            mem = run_child("memory", str(small), str(tmp / "mem.safetensors"), str(a.calib), "0")
            streamed = run_child("stream", str(small), str(tmp / "stream.safetensors"), str(a.calib), "0")
            size, n = folder_bytes(small)
            res["small"] = {"layers": a.small_layers, "fp32_bytes": size, "shards": n, "in_memory": mem,
                            "streamed": streamed, "bit_identical": mem["sha256"] == streamed["sha256"],
                            "time_ratio_stream_over_memory": round(streamed["wall_s"] / mem["wall_s"], 3)}
            print(json.dumps(res["small"], indent=1), flush=True)
        if not a.skip_big:
            big = tmp / "big"
            subprocess.run([sys.executable, __file__, "--make", str(big), str(a.layers), "300MB", str(a.vocab)], check=True)
            size, n = folder_bytes(big)
            run = run_child("stream", str(big), str(tmp / "big.safetensors"), str(a.calib), str(a.cap_mb),
                            timeout=a.timeout)
            res["big"] = {"layers": a.layers, "fp32_bytes": size, "shards": n, "streamed": run}
            if "peak_rss_mb" in run:
                res["big"]["run_rss_mb"] = run["peak_rss_mb"] - run["import_rss_mb"]
            print(json.dumps(res["big"], indent=1), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(summarise(res), indent=1) + "\n")


if __name__ == "__main__":
    main()
