"""Write a safetensors file one tensor at a time, byte for byte what ``safetensors.torch.save_file`` writes.

The format: 8 bytes of little-endian header length, a JSON header (``__metadata__`` first, then each tensor's
dtype, shape and byte range, padded with spaces to a multiple of 8), then the raw bytes. Tensors are laid out
in the order safetensors itself uses (by dtype, then name); that order is read off the installed safetensors
with a few one-element tensors rather than copied, so a release that changes it changes ours too. Only the
header is held in memory: each tensor is fetched by its ``read`` callable when its turn comes, written and
dropped. The file is written to a temporary name and renamed (:func:`bitladder.atomic.atomic_path`).

>>> import torch, tempfile, pathlib
>>> from safetensors.torch import save_file
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> ts = {"b": torch.arange(3, dtype=torch.int8), "a": torch.ones(2, 2)}
>>> save_file(ts, str(d / "ref.st"), metadata={"k": "v"})
>>> _ = write_streamed(d / "ours.st", [Entry(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in ts.items()], {"k": "v"})
>>> (d / "ours.st").read_bytes() == (d / "ref.st").read_bytes()
True
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from bitladder.atomic import atomic_path

#: torch dtype -> the name safetensors writes in its header
NAMES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.uint16: "U16",
         torch.int32: "I32", torch.uint32: "U32", torch.int64: "I64", torch.uint64: "U64", torch.float16: "F16",
         torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3",
         torch.float8_e5m2: "F8_E5M2"}


@dataclass(frozen=True)
class Entry:
    """One tensor to write: its name, dtype, shape, and a callable returning it when its bytes are due."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    read: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in the file."""
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


def dtype_rank() -> dict[torch.dtype, int]:
    """Position of each dtype in safetensors' layout order, measured on the installed safetensors."""
    probe = {f"t{i:02d}": torch.zeros(1, dtype=d) for i, d in enumerate(NAMES)}
    raw = save(probe)
    header = json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])
    order = [k for k in header if k != "__metadata__"]  # serde keeps the layout order in the header
    dtypes = list(NAMES)
    return {dtypes[int(k[1:])]: i for i, k in enumerate(order)}


def header_bytes(entries: list[Entry], metadata: dict[str, str] | None) -> tuple[bytes, list[Entry]]:
    """The length-prefixed, padded header and the entries in layout order."""
    rank = dtype_rank()
    ordered = sorted(entries, key=lambda e: (rank[e.dtype], e.name))
    head: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in ordered:
        head[e.name] = {"dtype": NAMES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text, ordered


def write_streamed(path: str | os.PathLike, entries: Iterable[Entry], metadata: dict[str, str] | None = None) -> Path:
    """Write ``entries`` to ``path`` as safetensors, atomically, holding one tensor at a time."""
    entries = list(entries)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names")
    head, ordered = header_bytes(entries, metadata)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            for e in ordered:
                t = e.read().detach().contiguous()
                if t.dtype != e.dtype or tuple(t.shape) != e.shape:
                    raise ValueError(f"tensor {e.name}: expected {e.dtype} {e.shape}, read {t.dtype} {tuple(t.shape)}")
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
                del t
            f.flush()
            os.fsync(f.fileno())
    return path
