"""Linear 1024² and 4096², batch 1 and 64: fp32 vs every bitladder kernel vs torch.ao (one run).

    python benchmarks/bench_linear.py [--json runs/bench-linear.json]
"""

import sys

from bitladder.cli.app import main

if __name__ == "__main__":
    main(["bench", "--suite", "linear", *sys.argv[1:]])
