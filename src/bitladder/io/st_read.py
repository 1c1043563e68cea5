"""Read single tensors from a safetensors file with plain reads, not a memory map.

``safe_open`` maps the whole file privately: every page a read touches stays in the process's resident set
until the file is closed, and the private writable mapping counts against ``RLIMIT_DATA`` in full (a 300 MB
shard could not be opened under a 512 MB data limit). Streamed quantisation reads a block's tensors out of
shards many times its size, so it reads each tensor's byte range into a fresh tensor instead: only that
tensor's bytes become resident (the rest stays in the page cache, which the process does not hold).

>>> import torch, tempfile, pathlib
>>> from safetensors.torch import save_file
>>> p = pathlib.Path(tempfile.mkdtemp()) / "t.safetensors"
>>> save_file({"a": torch.arange(6.).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}, str(p))
>>> f = TensorFile(p)
>>> sorted(f.names()), f.read("a").tolist(), f.read("b").dtype
(['a', 'b'], [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], torch.bfloat16)
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

from bitladder.errors import BitladderError
from bitladder.io.stream_write import NAMES

DTYPES = {v: k for k, v in NAMES.items()}  # the safetensors header's dtype name -> torch dtype
_MAX_HEADER = 100_000_000  # safetensors' own bound on the JSON header


class TensorFile:
    """The header of the safetensors file ``path`` (read once); :meth:`read` fetches one tensor's bytes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                raw = f.read(8)
                n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
                if not 0 < n <= _MAX_HEADER:
                    raise ValueError("no safetensors header")
                head = json.loads(f.read(n))
            self.size = self.path.stat().st_size
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise BitladderError(f"{self.path} is not a readable safetensors file: {str(e)[:200]}") from None
        if not isinstance(head, dict):
            raise BitladderError(f"{self.path} is not a readable safetensors file: its header is not an object")
        self.metadata = head.pop("__metadata__", None) or {}
        self.start = 8 + n
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        for name, e in head.items():
            try:
                dtype, shape, (a, b) = DTYPES[e["dtype"]], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise BitladderError(f"{self.path}: tensor {name!r} has a header entry bitladder cannot read "
                                     f"(dtypes: {', '.join(DTYPES)})") from None
            numel = 1
            for d in shape:
                numel *= d
            if not (0 <= a <= b and b - a == numel * dtype.itemsize and self.start + b <= self.size):
                raise BitladderError(f"{self.path} is corrupt: tensor {name!r}'s byte range does not fit its "
                                     "shape or the file")
            self.entries[name] = (dtype, shape, self.start + a, b - a)

    def names(self) -> list[str]:
        """The tensors' names, in header order."""
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def dtype_shape(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """The dtype and shape of tensor ``name``."""
        dtype, shape, _, _ = self.entries[name]
        return dtype, shape

    def read(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read into its own memory; BitladderError when the file lacks it or ends early."""
        if name not in self.entries:
            raise BitladderError(f"{self.path}: no tensor {name!r}")
        dtype, shape, offset, nbytes = self.entries[name]
        t = torch.empty(shape, dtype=dtype)
        if nbytes:
            view = memoryview(t.reshape(-1).view(torch.uint8).numpy())
            with open(self.path, "rb") as f:
                f.seek(offset)
                got = f.readinto(view)
            if got != nbytes:
                raise BitladderError(f"{self.path} is truncated: tensor {name!r} ends past the end of the file")
        return t
