"""The export-target registry: every target names its package, a missing one says what to install."""

import importlib.util

import pytest

from bitladder.errors import BitladderError
from bitladder.io import targets


def test_every_target_is_registered_with_what_it_writes():
    assert set(targets.TARGETS) == {"onnx", "gguf", "hf", "executorch"}
    for t in targets.TARGETS.values():
        assert t.writes in ("file", "folder") and t.needs and callable(t.write)


def test_a_missing_package_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(BitladderError, match=r"needs the gguf package: pip install 'bitladder\[deploy\]'"):
        targets.target("gguf")


def test_unknown_targets_and_stray_options_are_refused(tmp_path):
    with pytest.raises(BitladderError, match="accepted: onnx, gguf, hf, executorch"):
        targets.target("tflite")
    with pytest.raises(BitladderError, match="weights apply to --to onnx only"):
        targets.export("hf", None, None, tmp_path / "x", weights="matmulnbits")
    with pytest.raises(BitladderError, match="static_gemm apply to --to onnx only"):
        targets.export("gguf", None, None, tmp_path / "x", static_gemm="qdq")
