"""Child process of the memory-cap test: ``python -m tests.pipeline.stream.capped MODE FOLDER OUT CAP_MB``.

Imports everything the run will use (torch, bitladder, transformers' Llama classes), caps the process's
private data (``RLIMIT_DATA``: heap and anonymous mappings, which is what holds weights) at what the imports
took plus ``CAP_MB``, then quantises the folder with GPTQ W4 g64, streamed (``stream``) or whole in memory
(``memory``). Prints one JSON line: peak RSS (imports included) and what the imports took.
"""

import json
import resource
import sys
from pathlib import Path


def vm(field: str) -> float:
    """A /proc/self/status field in MB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def main(mode: str, folder: str, out: str, cap_mb: float) -> None:
    import transformers  # noqa: F401  (the model classes are imported before the cap, as the library does)
    from transformers import LlamaForCausalLM  # noqa: F401

    import bitladder
    from bitladder.io.artifact import save
    from bitladder.pipeline.stream.run import stream_quantize
    from bitladder.zoo import hf_folder

    config = bitladder.Int(4, group=64, method=bitladder.GPTQ())
    calib = hf_folder.calibration(Path(folder), 16, 8)
    rss0, data0 = vm("VmRSS"), vm("VmData")
    cap = int((data0 + cap_mb) * 2**20)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    if mode == "stream":
        stream_quantize(folder, config, calib, out)
    else:
        save(bitladder.quantize(hf_folder.build(folder), config, calib=calib, inplace=True), out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": round(peak), "import_rss_mb": round(rss0), "import_data_mb": round(data0)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
