"""Read single tensors from a Hugging Face checkpoint folder: one ``model.safetensors`` or shards listed in
``model.safetensors.index.json``. Each read takes only that tensor's bytes from the shard that holds it
(:class:`~bitladder.io.st_read.TensorFile`: plain reads, not a memory map), so reading a block never makes a
shard resident. Loading never executes pickled code: ``pytorch_model.bin`` folders are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from bitladder.errors import BitladderError
from bitladder.io.st_read import TensorFile

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Shards:
    """Tensor name -> shard file of a checkpoint folder, checked on construction."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._open: dict[str, TensorFile] = {}  # shard -> its parsed header
        index, single = self.folder / INDEX, self.folder / SINGLE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                self.where = {str(k): str(v) for k, v in weight_map.items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
                raise BitladderError(f"{index} is not a safetensors index (a JSON object with a 'weight_map')") from None
        elif single.is_file():
            self._open[SINGLE] = TensorFile(single)  # its header, parsed once for the map and the reads
            self.where = {k: SINGLE for k in self._open[SINGLE].names()}
        else:
            bins = "; it holds pickle weights (*.bin), which bitladder never loads" if any(self.folder.glob("*.bin")) else ""
            raise BitladderError(f"{self.folder} has no safetensors weights ({SINGLE} or {INDEX}){bins}")
        missing = sorted({f for f in self.where.values() if not (self.folder / f).is_file() or "/" in f})
        if missing:
            raise BitladderError(f"{self.folder}: shard(s) missing: {', '.join(missing)} (listed in {INDEX})")

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def files(self) -> list[str]:
        """The shard files, sorted."""
        return sorted(set(self.where.values()))

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name``, read from its shard; BitladderError when no shard holds it."""
        if name not in self.where:
            raise BitladderError(f"{self.folder}: no tensor {name!r} in the checkpoint")
        shard = self.where[name]
        if shard not in self._open:
            self._open[shard] = TensorFile(self.folder / shard)
        f = self._open[shard]
        if name not in f:
            raise BitladderError(f"{f.path} is corrupt or lacks {name!r} (its index lists it there)")
        return f.read(name)

    def fingerprint(self) -> str:
        """A hash of the tensor map and each shard's size and safetensors header (not of every weight byte:
        reading gigabytes to resume would cost as much as the run)."""
        h = hashlib.sha256(json.dumps(self.where, sort_keys=True).encode())
        for f in self.files():
            path = self.folder / f
            with open(path, "rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                h.update(f.encode() + str(path.stat().st_size).encode() + fh.read(min(n, 100_000_000)))
        return h.hexdigest()

