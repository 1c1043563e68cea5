"""The work folder of a streamed run: committed state reads back; damage and other runs are refused."""

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder.pipeline.stream.work import Work, fingerprint


def test_commit_and_read_back(tmp_path):
    w = Work(tmp_path / "w", "abc")
    assert w.begin() is None
    hidden = [torch.randn(2, 3, 4) for _ in range(12)]
    w.commit(0, hidden[:1])
    w.commit(3, hidden)
    assert Work(tmp_path / "w", "abc").begin() == 3
    assert all(torch.equal(a, b) for a, b in zip(w.hidden(3), hidden, strict=True))
    assert [p.name for p in (tmp_path / "w").glob("hidden-*")] == ["hidden-00003.safetensors"]
    w.save_part("block-00000", {"a.b": torch.ones(2)}, {"a": {"handler": "QuantLinear"}})
    assert w.part("block-00000").is_file()
    with pytest.raises(BitladderError, match="block-00001.safetensors missing"):
        w.part("block-00001")
    w.remove()
    assert not (tmp_path / "w").exists()


def test_other_run_and_damage_refused(tmp_path):
    w = Work(tmp_path / "w", "abc")
    w.begin()
    w.commit(1, [])
    with pytest.raises(BitladderError, match="another model, config or calibration"):
        Work(tmp_path / "w", "xyz").begin()
    (tmp_path / "w" / "state.json").write_text("{")
    with pytest.raises(BitladderError, match="is damaged"):
        w.begin()


def test_fingerprint_sees_every_input():
    t = torch.arange(6)
    base = fingerprint("a", "b", tensors=[t])
    assert base == fingerprint("a", "b", tensors=[t.clone()])
    assert len({base, fingerprint("a", "c", tensors=[t]), fingerprint("a", "b", tensors=[t.view(2, 3)]),
                fingerprint("a", "b", tensors=[t + 1]), fingerprint("ab", tensors=[t])}) == 5
