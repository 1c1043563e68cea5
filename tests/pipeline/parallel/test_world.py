"""Launch checks: a pipeline of N stages needs N processes, and says how to start them."""

import pytest

from bitladder.errors import BitladderError
from bitladder.pipeline.parallel.world import open_world


def test_several_stages_without_torchrun_say_how_to_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(BitladderError, match="--pipeline 2 runs one stage per process: launch it with torchrun "
                                             "--nproc-per-node 2 --no-python bitladder run ARTIFACT --pipeline 2"):
        open_world(2, 60)
    assert open_world(1, 60).size == 1


@pytest.mark.parametrize(("env", "stages", "timeout", "message"), [
    ("3", 2, 60, "--pipeline 2 needs 2 processes, but 3 were launched"),
    ("two", 2, 60, "WORLD_SIZE must be an integer, got 'two'"),
    ("1", 0, 60, "at least 1, got 0"),
    ("1", 1, 0, "timeout must be a positive number of seconds, got 0"),
])
def test_bad_launches(monkeypatch, env, stages, timeout, message):
    monkeypatch.setenv("WORLD_SIZE", env)
    with pytest.raises(BitladderError, match=message):
        open_world(stages, timeout)

