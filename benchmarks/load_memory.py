"""Peak memory of loading an int4 artifact of a Hugging Face causal LM: into the float model read from the
checkpoint, against the weightless skeleton ``bitladder.load`` fills.

    OMP_NUM_THREADS=1 python benchmarks/load_memory.py [--json docs/results/load-memory-avx2.json]

A random Llama (4 blocks, width 2048, SwiGLU 5632, vocabulary 32000) is saved in bf16, as Hugging Face
checkpoints usually are, to a temporary folder; ``bitladder`` quantises it to int4 g64 (RTN) and saves the
artifact with the folder as its source. Each load runs in a fresh process that reports its peak RSS (``VmHWM``, reset
when the process starts: Linux keeps the parent's across exec; imports included) and the peak after its imports; both loaded models' outputs on the same tokens are compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = {"vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 4,
          "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 256,
          "tie_word_embeddings": False}


def make(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import bitladder
    from bitladder.zoo import hf_folder
    from bitladder.zoo.registry import build_builtin

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**CONFIG)).to(torch.bfloat16).save_pretrained(str(folder / "hf"))
    source = hf_folder.source_of(folder / "hf")
    q = bitladder.quantize(build_builtin(source), bitladder.Int(4, group=64), inplace=True)
    bitladder.save(q, folder / "int4.safetensors", source=source)


def _hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(mode: str, folder: Path) -> dict:
    with open("/proc/self/clear_refs", "w") as f:  # Linux keeps the high-water mark across exec: start it here
        f.write("5")
    import torch

    import bitladder
    from bitladder.io.artifact import load
    from bitladder.zoo.registry import build_builtin

    imports = _hwm_mb()
    path = folder / "int4.safetensors"
    model = load(path, builder=build_builtin) if mode == "float model from the checkpoint" else bitladder.load(path)
    peak = _hwm_mb()
    with torch.no_grad():
        out = model(torch.arange(64).reshape(1, 64))
    torch.save(out, folder / f"{mode[:5]}.pt")
    return {"variant": mode, "peak_rss_mb": round(peak), "import_rss_mb": round(imports)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("MODE", "FOLDER"))
    ap.add_argument("--make", metavar="FOLDER")
    a = ap.parse_args()
    if a.make:
        make(Path(a.make))
        return
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]))))
        return
    import torch

    from bitladder.pipeline.measure.machine import machine

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, __file__, "--make", tmp], check=True, capture_output=True)
        size = sum(p.stat().st_size for p in (folder / "hf").glob("*.safetensors"))
        rows = []
        for mode in ("float model from the checkpoint", "bitladder.load (weightless skeleton)"):
            res = subprocess.run([sys.executable, __file__, "--child", mode, str(folder)], capture_output=True,
                                 text=True, check=True)
            rows.append({"model": "random Llama, 4 blocks, bf16 checkpoint", "bytes_fp32": size * 2,
                         "bytes_on_disk": (folder / "int4.safetensors").stat().st_size,
                         **json.loads(res.stdout.strip().splitlines()[-1])})
        same = torch.equal(torch.load(folder / "float.pt"), torch.load(folder / "bitla.pt"))
    out = {"schema": "bitladder.load-memory/1", "command": " ".join(["python", *sys.argv]), "machine": machine(),
           "outputs_equal": same, "rows": rows}
    print(json.dumps(out["rows"], indent=1), "outputs equal:", same)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
