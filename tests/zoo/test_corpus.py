import pytest

from bitladder.zoo import corpus


def test_real_sentences_disjoint_and_deterministic():
    s = corpus.all_sentences()
    assert len(s) >= 1000
    ev, cal = corpus.eval_sentences(256), corpus.calibration_sentences(128)
    assert not set(ev) & set(cal)
    assert ev == corpus.eval_sentences(256)
    assert all(x[0].isupper() and x[-1] in ".!?" and len(x.split()) >= 6 for x in ev)


def test_training_sentences_larger_disjoint_and_deterministic():
    train = corpus.training_sentences()
    assert len(train) >= 5 * len(corpus.all_sentences())  # far more text than the 1,024 of the spec
    assert len(set(train)) == len(train)
    s = corpus.all_sentences()
    assert not set(train) & set(s[: len(s) // 2])  # the half every eval slice comes from
    assert not set(train) & set(corpus.eval_sentences(256))
    assert corpus.training_sentences(100) == train[:100] == corpus.training_sentences(100)
    assert all(x[0].isupper() and x[-1] in ".!?" and 6 <= len(x.split()) <= 40 for x in train)
    with pytest.raises(ValueError):
        corpus.training_sentences(len(train) + 1)


def test_calibration_up_to_what_this_pythons_docstrings_give(monkeypatch):
    # the pool's size follows the Python version: MiniLM's distillation set takes what there is
    monkeypatch.setattr(corpus, "all_sentences", lambda: tuple(f"Sentence number {i} is here." for i in range(10)))
    assert corpus.calibration_sentences(3) == [f"Sentence number {i} is here." for i in (5, 6, 7)]
    assert corpus.calibration_sentences(8, up_to=True) == corpus.calibration_sentences(5)
    with pytest.raises(ValueError, match="at most 5 calibration sentences exist, asked for 6"):
        corpus.calibration_sentences(6)
