"""The ``machine`` object every result file carries, and the ``BITLADDER_CPU`` override as it shows there."""

import pytest

from bitladder.errors import BitladderError
from bitladder.kernels import fp32_gemm
from bitladder.kernels.cpu import FEATURES, LEVELS
from bitladder.pipeline.measure.machine import LIBRARY_CAPS, machine, one_line

AVX512 = ("avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "vpopcntdq", "amx")


def test_every_key_with_its_type(monkeypatch):
    monkeypatch.delenv("BITLADDER_CPU", raising=False)
    for name in LIBRARY_CAPS:
        monkeypatch.delenv(name, raising=False)
    m = machine()
    assert isinstance(m["cpu"], str) and m["cpu"]
    assert set(m["flags"]) == set(FEATURES) and all(isinstance(v, bool) for v in m["flags"].values())
    assert isinstance(m["cores"], int) and m["cores"] >= 1
    assert isinstance(m["threads"], int) and m["threads"] >= 1
    assert {"python", "torch", "numpy"} <= set(m["versions"])
    assert all(isinstance(v, str) for v in m["versions"].values())
    assert "read_gbps" not in m and "bitladder_cpu" not in m  # measured limits only when given
    assert "library_caps" not in m
    assert isinstance(m["vendor"], str) and m["fp32_gemm"] in ("torch", "onednn")


def test_measured_limits_are_added_when_given():
    m = machine(read_gbps=12.345, fp32_gflops=100.0, int8_gops=None)
    assert m["read_gbps"] == 12.35 and m["fp32_gflops"] == 100.0 and "int8_gops" not in m


def test_avx2_override_shows_no_avx512(monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "avx2")
    m = machine()
    assert m["bitladder_cpu"] == "avx2"
    assert not any(m["flags"][f] for f in AVX512) and not m["flags"]["avx_vnni"]
    assert m["fp32_gemm"] == ("onednn" if m["vendor"] not in ("GenuineIntel", "") and fp32_gemm.onednn_installed()
                              else "torch")  # AVX2 is enough for oneDNN off Intel
    assert set(m["host_flags"]) == set(FEATURES)
    assert "BITLADDER_CPU=avx2" in one_line(m)


def test_bogus_override_lists_the_accepted_values(monkeypatch):
    monkeypatch.setenv("BITLADDER_CPU", "bogus")
    with pytest.raises(BitladderError, match="bogus") as e:
        machine()
    assert all(level in str(e.value) for level in LEVELS)


def test_library_caps_are_named_with_the_run(monkeypatch):
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    m = machine()
    assert m["library_caps"] == {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    assert not m["fbgemm_flags"]["avx512_vnni"] and not m["flags"]["avx512_vnni"]


def test_one_line_names_the_generation_behind_a_masked_model_name():
    m = {"cpu": "AMD EPYC", "cpu_id": {"family": 25, "model": 17, "stepping": 1}, "flags": {"avx2": True},
         "cores": 2, "threads": 2}
    assert one_line(m) == "AMD EPYC family 25 model 17 (avx2; 2 cores, 2 threads)"
    assert one_line({**m, "cpu_id": None}) == "AMD EPYC (avx2; 2 cores, 2 threads)"


def test_a_result_files_command_starts_with_the_cpu_caps_in_force(monkeypatch):
    from bitladder.pipeline.measure.machine import LIBRARY_CAPS, command

    for name in ("BITLADDER_CPU", *LIBRARY_CAPS):
        monkeypatch.delenv(name, raising=False)
    assert command("python b.py", ["--json", "x.json"]) == "python b.py --json x.json"
    monkeypatch.setenv("BITLADDER_CPU", "avx512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert command("python b.py", []) == "BITLADDER_CPU=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE python b.py"
    assert command("bitladder bench", ["--only", "W8, W4"]) == (  # a line a shell reruns as it ran
        "BITLADDER_CPU=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE bitladder bench --only 'W8, W4'")
