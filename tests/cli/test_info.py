"""``bitladder list``: every registry shows what is registered, nothing is a hand-kept list."""

import pytest

from bitladder.formats.qtypes import QTYPES
from bitladder.kernels import registry
from bitladder.pipeline.recipe.steps import STEPS
from tests.cli.test_cli import cli, one_line_error


@pytest.mark.parametrize("what,expected", [
    ("formats", [*QTYPES, "normal", "Format"]),
    ("methods", ["-gptq", "-clip", "-adaround"]),
    ("transforms", ["hadamard", "smoothquant", "equalize"]),
    ("kernels", [k.name for k in registry.for_op("linear")]),
    ("steps", list(STEPS)),
    ("models", ["digits", "minilm"]),
])
def test_list_shows_every_registered_entry(what, expected):
    res = cli("list", what)
    assert res.returncode == 0, res.stderr
    for name in expected:
        assert name in res.stdout, f"{name} missing from `bitladder list {what}`"


def test_list_refuses_an_unknown_registry():
    one_line_error(cli("list", "dtypes"), "dtypes", "formats, methods")
