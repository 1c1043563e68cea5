from bitladder.zoo import corpus


def test_real_sentences_disjoint_and_deterministic():
    s = corpus.all_sentences()
    assert len(s) >= 1000
    ev, cal = corpus.eval_sentences(256), corpus.calibration_sentences(128)
    assert not set(ev) & set(cal)
    assert ev == corpus.eval_sentences(256)
    assert all(x[0].isupper() and x[-1] in ".!?" and len(x.split()) >= 6 for x in ev)
