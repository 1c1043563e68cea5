"""``bench --only``: terms split at a comma without a space (variant names contain ', '), unknown terms refused."""

from pathlib import Path
from types import SimpleNamespace

import pytest

from bitladder.errors import BitladderError
from bitladder.pipeline.bench import minilm
from bitladder.pipeline.bench.only import pick, split_only


@pytest.mark.parametrize("text, terms", [
    ("", None), (",", None), ("torch.ao", ["torch.ao"]), ("a,b", ["a", "b"]), ("a,,b,", ["a", "b"]),
    ("W7A8 static, Smooth,torch.ao", ["W7A8 static, Smooth", "torch.ao"]),
    (" a , b", ["a , b"]),  # the comma is followed by a space: one term
])
def test_only_a_comma_without_a_space_separates_terms(text, terms):
    assert split_only(text) == terms


def test_a_variant_named_with_commas_is_picked_alone_by_its_full_name():
    every = list(minilm.variants(SimpleNamespace(calib_batches=None), Path(".")))  # names only, nothing built
    name = next(n for n in every if n.count(", ") >= 2)
    assert pick(every, split_only(f"{name},torch.ao"), minilm.ANCHORS, "minilm") == [
        *minilm.ANCHORS, *(n for n in every if n == name or "torch.ao" in n)]
    assert pick(every, None, minilm.ANCHORS, "minilm") == list(dict.fromkeys([*minilm.ANCHORS, *every]))


def test_a_term_that_matches_no_variant_is_one_clear_error():
    every = ["fp32 torch", "bitladder W8 weight-only"]
    with pytest.raises(BitladderError, match=r"--only 'W9' matches no minilm variant; .*comma without a space"):
        pick(every, ["W8", "W9"], ("fp32 torch",), "minilm")
