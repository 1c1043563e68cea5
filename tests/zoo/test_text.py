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
    ("x.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', r"x.jsonl:2: no \"label\", unlike the lines before"),
    ("x.jsonl", '{"text": "a", "label": 1.5}\n', r"x.jsonl:1: \"label\" must be an integer class or a label name"),
    ("x.jsonl", '{"text": "a", "label": 1}\n{"text": "a", "label": 2}\n', "appears with labels 1 and 2"),
    ("x.txt", "one\ntwo\none\n", "2 distinct samples; at least 4"),
])
def test_bad_files_say_what_is_wrong_in_one_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(BitladderError, match=match):
        text.read(tmp_path / name)


def test_labels_stay_with_their_samples_and_only_classifiers_take_them(tmp_path):
    rows = [{"text": f"review {i} of the compressed model", "label": ["neg", "pos"][i % 2]} for i in range(20)]
    (tmp_path / "l.jsonl").write_text("\n".join(json.dumps(r) for r in rows + rows[:3]))  # repeats kept once
    t = text.read(tmp_path / "l.jsonl")
    truth = {r["text"]: r["label"] for r in rows}
    assert len(t.eval) + len(t.calib) == 20 and not set(t.eval) & set(t.calib)
    assert [truth[s] for s in t.eval] == t.eval_labels and [truth[s] for s in t.calib] == t.calib_labels
    with pytest.raises(BitladderError, match="has \"label\" fields; the built-in text models .* drop the field"):
        resolve("minilm", data=tmp_path / "l.jsonl")


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
