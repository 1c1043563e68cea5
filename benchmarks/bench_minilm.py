"""MiniLM encode, batch 32, max length 128: fp32 vs bitladder vs peers, fidelity and speed (one run).

    python benchmarks/bench_minilm.py [--json runs/bench-minilm.json]
"""

import sys

from bitladder.cli.app import main

if __name__ == "__main__":
    main(["bench", "--suite", "minilm", *sys.argv[1:]])
