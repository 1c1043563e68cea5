import hashlib
import pickle

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import bitladder
from bitladder import BitladderError, Int, Ternary
from bitladder.io.artifact import read_header


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 5), nn.LayerNorm(5))


def factory_pair(tmp_path, cfg=Int(4, group=16)):
    q = bitladder.quantize(model(), cfg)
    path = bitladder.save(q, tmp_path / "m.safetensors", config=cfg.to_dict())
    return q, path


@pytest.mark.parametrize("cfg", [Int(4, group=16), Int(3, symmetric=False, group=8), Ternary(),
                                 bitladder.Binary(), bitladder.Float("fp8_e4m3"), bitladder.Float("bf16")])
def test_reload_gives_identical_outputs(tmp_path, cfg):
    q, path = factory_pair(tmp_path, cfg)
    back = bitladder.load(path, model=model())
    x = torch.randn(4, 3, 8)
    assert torch.equal(back(x), q(x))
    meta, info = read_header(path)
    assert meta["layers"]["0"]["qtype"] == cfg.qtype and meta["config"] == cfg.to_dict()


def test_same_inputs_same_bytes(tmp_path):
    _, a = factory_pair(tmp_path)
    digest = hashlib.sha256(a.read_bytes()).hexdigest()
    a.rename(tmp_path / "first.safetensors")
    _, b = factory_pair(tmp_path)
    assert hashlib.sha256(b.read_bytes()).hexdigest() == digest


def test_no_temp_files_left(tmp_path):
    factory_pair(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_truncated_artifact(tmp_path):
    _, path = factory_pair(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) - 10, 100, 5, 0):
        path.write_bytes(data[:cut])
        with pytest.raises(BitladderError, match="truncated"):
            bitladder.load(path, model=model())


def test_corrupt_header(tmp_path):
    _, path = factory_pair(tmp_path)
    data = bytearray(path.read_bytes())
    data[12:20] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with pytest.raises(BitladderError, match="corrupt"):
        bitladder.load(path, model=model())


def test_pickle_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    p = tmp_path / "evil.safetensors"
    p.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(BitladderError, match="pickle"):
        bitladder.load(p, model=model())
    t = tmp_path / "model.pt"
    torch.save(model().state_dict(), t)
    with pytest.raises(BitladderError, match="pickle"):
        bitladder.load(t, model=model())


def test_plain_safetensors_is_not_an_artifact(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(3)}, str(p))
    with pytest.raises(BitladderError, match="not a bitladder artifact"):
        bitladder.load(p, model=model())


def test_mismatched_model(tmp_path):
    _, path = factory_pair(tmp_path)
    other = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 7), nn.LayerNorm(7))
    with pytest.raises(BitladderError, match="does not match|inconsistent"):
        bitladder.load(path, model=other)
    with pytest.raises(BitladderError, match="does not exist in the given model"):
        bitladder.load(path, model=nn.Module())
    with pytest.raises(BitladderError, match="was QuantConv1d, the model has Linear"):
        bitladder.load(path, model=nn.Sequential(nn.Linear(1, 1)))


def test_missing_file_and_missing_folder(tmp_path):
    with pytest.raises(BitladderError, match="does not exist"):
        bitladder.load(tmp_path / "nope.safetensors", model=model())
    with pytest.raises(BitladderError, match="does not exist"):
        bitladder.save(model(), tmp_path / "no" / "dir" / "m.safetensors")


def test_unknown_source_needs_a_model(tmp_path):
    _, path = factory_pair(tmp_path)
    with pytest.raises(BitladderError, match="not a built-in model"):
        bitladder.load(path)


@pytest.mark.parametrize("meta", ['{"format_version": 1, "layers": ', '[1, 2]', '{"format_version": 1}'])
def test_corrupt_bitladder_metadata_is_one_clear_error(tmp_path, meta):
    # a valid safetensors file whose bitladder metadata was damaged (hand-edited, cut, another tool's)
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"bitladder": meta})
    with pytest.raises(BitladderError, match="corrupt: its bitladder metadata"):
        bitladder.load(path, model=model())



def rewrite_meta(path, edit=None, metadata=None):
    """The artifact at ``path`` with its bitladder metadata passed through ``edit`` (or its whole safetensors
    ``__metadata__`` replaced); the tensors unchanged."""
    import json
    import struct

    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    if metadata is None:
        meta = json.loads(header["__metadata__"]["bitladder"])
        edit(meta)
        metadata = {"bitladder": json.dumps(meta)}
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def test_edited_metadata_is_named_in_one_line(tmp_path):
    _, path = factory_pair(tmp_path)
    rewrite_meta(path, lambda m: m["layers"]["0"].update(shape=[8, 9]))  # the bytes of [8, 3, 3]
    with pytest.raises(BitladderError, match=r"layer '0' does not match the model: shape \[8, 9\] in the artifact"):
        bitladder.load(path, model=model())
    rewrite_meta(path, lambda m: m["layers"]["0"].update(layout={"granularity": "group", "group": -4}))
    with pytest.raises(BitladderError, match="corrupt: layer '0': layout must be an object"):
        read_header(path)
    for metadata in ([1], {"bitladder": 7}):  # not an object; not a string
        rewrite_meta(path, metadata=metadata)
        with pytest.raises(BitladderError, match="not a bitladder artifact|metadata is not valid JSON"):
            read_header(path)
