"""User text (--data): a disjoint evaluation / calibration split, one-line errors for bad files, and the
text models built on it."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bitladder.errors import BitladderError
from bitladder.zoo import text
from bitladder.zoo.registry import resolve


@given(st.lists(st.text(min_size=1, max_size=20).filter(str.strip), min_size=4, max_size=60))
def test_split_is_disjoint_covers_every_distinct_sample_and_ignores_order(samples):
    if len(set(samples)) < text.MIN_SAMPLES:
        with pytest.raises(BitladderError, match="distinct samples"):
            text.from_lines(samples, "f")
        return
    t = text.from_lines(samples, "f")
    assert not set(t.eval) & set(t.calib)
    assert set(t.eval) | set(t.calib) == set(samples)
    assert 0 <= len(t.eval) - len(t.calib) <= 1
    assert text.from_lines(list(reversed(samples)), "f") == t


def test_plain_text_and_jsonl_read_the_same_samples(tmp_path):
    lines = [f"Sentence number {i} about compression." for i in range(12)]
    (tmp_path / "a.txt").write_text("\n".join(lines[:6]) + "\n\n  \n" + "\n".join(lines[6:]) + "\n" + lines[0])
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": s}) for s in lines))
    a, b = text.read(tmp_path / "a.txt"), text.read(tmp_path / "a.jsonl")
    assert (a.eval, a.calib) == (b.eval, b.calib) and len(a.eval) + len(a.calib) == 12


@pytest.mark.parametrize("name, content, match", [
    ("x.jsonl", '{"text": "a"}\nnot json\n', r"x.jsonl:2: not JSON"),
    ("x.jsonl", '{"body": "a"}\n', r"x.jsonl:1: needs a string field \"text\""),
    ("x.jsonl", '{"text": "a", "label": 1}\n', "use no labels"),
    ("x.txt", "one\ntwo\none\n", "2 distinct samples; at least 4"),
])
def test_bad_files_say_what_is_wrong_in_one_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(BitladderError, match=match):
        text.read(tmp_path / name)


def test_binary_and_missing_files(tmp_path):
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(BitladderError, match="not UTF-8"):
        text.read(tmp_path / "b.txt")
    with pytest.raises(BitladderError, match="does not exist"):
        text.read(tmp_path / "none.txt")


def test_text_models_take_the_file_and_others_refuse_it(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"Quantised model number {i} keeps {i % 7} bits of every weight." for i in range(300)))
    spec = resolve("tinylm", data=path)
    t = text.read(path)
    assert torch.equal(spec.eval_batches[0][0, :40], torch.tensor(list((t.eval[0] + "\n").encode()[:40])))
    with pytest.raises(BitladderError, match="'digits' is not a text model"):
        resolve("digits", data=path)
    with pytest.raises(BitladderError, match="not a text model"):
        resolve("tests.zoo.user_models:tiny_classifier", data=path)
