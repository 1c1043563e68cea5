"""The streamed safetensors writer writes what safetensors.torch.save_file writes, holding one tensor at a time."""

import pytest
import torch
from safetensors.torch import save_file

from bitladder.io.stream_write import NAMES, Entry, write_streamed


def _entries(ts):
    return [Entry(k, v.dtype, tuple(v.shape), lambda v=v: v) for k, v in ts.items()]


def test_same_bytes_as_safetensors_for_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    ts = {}
    for i, d in enumerate(NAMES):
        shape = (3, i + 1) if i % 2 else (5,)
        ts[f"layer.{i % 3}.t{i}"] = (torch.randn(shape, generator=g) * 4).to(d)
    ts["empty"] = torch.zeros(0, 4)
    ts["scalar"] = torch.tensor(2.5)
    meta = {"bitladder": '{"a": "é \\" /x", "n": [1, 2]}'}
    save_file(ts, str(tmp_path / "ref.safetensors"), metadata=meta)
    write_streamed(tmp_path / "ours.safetensors", reversed(_entries(ts)), meta)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_reads_each_tensor_once_in_layout_order(tmp_path):
    seen = []
    ts = {"b": torch.ones(2), "a": torch.ones(2, dtype=torch.int8), "c": torch.ones(1)}

    def entry(k):
        return Entry(k, ts[k].dtype, tuple(ts[k].shape), lambda: (seen.append(k), ts[k])[1])

    write_streamed(tmp_path / "x.safetensors", [entry(k) for k in ts])
    assert seen == ["b", "c", "a"]  # F32 before I8, names ascending within a dtype


def test_a_wrong_tensor_leaves_no_file(tmp_path):
    bad = Entry("w", torch.float32, (2, 2), lambda: torch.zeros(3))
    with pytest.raises(ValueError, match="expected"):
        write_streamed(tmp_path / "x.safetensors", [bad])
    assert list(tmp_path.iterdir()) == []
