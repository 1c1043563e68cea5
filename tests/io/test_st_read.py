"""Plain-read safetensors access: the same tensors safetensors gives, for every dtype, and one-line errors for
damaged files."""

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from bitladder.errors import BitladderError
from bitladder.io.st_read import DTYPES, TensorFile


@settings(max_examples=25, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=5),
       dtypes=st.lists(st.sampled_from(sorted(DTYPES)), min_size=5, max_size=5), seed=st.integers(0, 2**16))
def test_every_tensor_reads_back_as_safetensors_loads_it(tmp_path_factory, shapes, dtypes, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i, shape in enumerate(shapes):
        raw = torch.randint(0, 256, (int(torch.tensor(shape).prod()) * DTYPES[dtypes[i]].itemsize,), dtype=torch.uint8,
                            generator=g)
        tensors[f"t{i}"] = raw.view(DTYPES[dtypes[i]]).reshape(shape)  # any bit pattern, NaNs included
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file(tensors, str(path), metadata={"k": "v"})
    f, ref = TensorFile(path), load_file(str(path))
    assert sorted(f.names()) == sorted(ref) and f.metadata == {"k": "v"}
    for name, t in ref.items():
        got = f.read(name)
        assert got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8))


def test_damaged_files_are_refused_in_one_line(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.arange(100.0)}, str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[:-8])  # the last tensor ends past the end
    with pytest.raises(BitladderError, match="corrupt: tensor 'a'"):
        TensorFile(path)
    path.write_bytes(b"\x00" * 4)
    with pytest.raises(BitladderError, match="not a readable safetensors file"):
        TensorFile(path)
    head = b'{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"\x00" * 4)
    with pytest.raises(BitladderError, match="header entry bitladder cannot read"):
        TensorFile(path)
    save_file({"a": torch.ones(2)}, str(path))
    with pytest.raises(BitladderError, match="no tensor 'b'"):
        TensorFile(path).read("b")
