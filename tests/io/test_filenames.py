"""Names that become file names: no characters that Windows or sync tools refuse."""

from hypothesis import given
from hypothesis import strategies as st

from bitladder.io.filenames import safe_stem


def test_factory_and_study_names():
    assert safe_stem("tests.zoo.user_models:regressor") == "tests.zoo.user_models-regressor"
    assert safe_stem("my model/v2:int4 g64") == "my-model-v2-int4-g64"
    assert safe_stem("minilm") == "minilm"
    assert safe_stem(":::") == "model"


@given(st.text())
def test_any_name_gives_a_portable_stem(name):
    stem = safe_stem(name)
    assert stem and all(c.isascii() and (c.isalnum() or c in "._+-") for c in stem)
    assert not stem.startswith((".", "-"))
