"""BITLADDER_CPU caps the features kernels see: a level is a ceiling, never more than the host has."""

import os

import pytest
import torch

from bitladder.errors import BitladderError
from bitladder.kernels import cpu


@pytest.mark.parametrize("level", ["default", "avx2", "avx2-vnni", "avx512", "avx512-vnni", "avx512-bf16", "amx"])
def test_a_level_caps_the_host_features(level):
    got = cpu.current({"BITLADDER_CPU": level})
    assert got.flags == got.host_flags & cpu.LEVELS[level] and got.level == level
    if level in ("default", "avx2", "avx512"):
        assert not got.vnni and not got.bf16_dot  # the lesser CPUs of issue 17, on any host


def test_native_is_the_host_and_unset_means_native():
    assert cpu.current({}).flags == cpu.current({"BITLADDER_CPU": "native"}).flags == cpu.current({}).host_flags
    assert set(cpu.current({}).describe()["flags"]) == set(cpu.FEATURES)


def test_a_bad_level_is_one_line_naming_the_accepted_ones():
    with pytest.raises(BitladderError, match=r"BITLADDER_CPU='avx9'.*accepted: native, default, avx2"):
        cpu.current({"BITLADDER_CPU": "avx9"})


def test_levels_only_grow():
    names = ["default", "avx2", "avx512", "avx512-vnni", "avx512-bf16", "amx"]  # avx2-vnni: a side branch
    for lower, higher in zip(names, names[1:]):
        assert cpu.LEVELS[lower] < cpu.LEVELS[higher]


@pytest.mark.parametrize("isa,allowed", [("AVX2", {"avx2"}), ("avx512_core", {"avx2", "avx512f", "avx512bw"}),
                                         ("AVX2_VNNI", {"avx2", "avx_vnni"}), ("SSE41", set())])
def test_onednns_own_cap_caps_the_features_too(isa, allowed):
    # a VNNI activation grid on a oneDNN held below VNNI would saturate its u8 x s8 pair sums
    got = cpu.current({"ONEDNN_MAX_CPU_ISA": isa})
    assert got.flags == got.host_flags & allowed and not got.has("avx512_vnni")
    both = cpu.current({"ONEDNN_MAX_CPU_ISA": isa, "BITLADDER_CPU": "avx2"})
    assert both.flags == got.host_flags & allowed & {"avx2"}
    if got.flags != got.host_flags:
        assert set(got.describe()["host_flags"]) == set(cpu.FEATURES)


@pytest.mark.parametrize("isa", ["ALL", "DEFAULT", "", "AVX512_CORE_AMX", "nonsense"])
def test_a_onednn_value_that_caps_nothing_leaves_the_host(isa):
    assert cpu.current({"ONEDNN_MAX_CPU_ISA": isa}).flags == cpu.current({}).host_flags


def test_the_vendor_is_read_and_kept_under_a_level():
    host = cpu.current({})
    assert cpu.current({"BITLADDER_CPU": "avx2"}).vendor == host.vendor == host.describe()["vendor"]


def test_avx_vnni_alone_is_vnni_to_onednn_but_not_to_fbgemm():
    got = cpu.current({"BITLADDER_CPU": "avx2-vnni"})
    assert not got.has("avx512f") and got.vnni == ("avx_vnni" in got.host_flags)
    assert got.dot32("onednn") == got.vnni and not got.dot32("fbgemm")  # fbgemm has no AVX-VNNI kernel
    assert cpu.LEVELS["avx2"] < cpu.LEVELS["avx2-vnni"]


@pytest.mark.parametrize("value,vnni", [("AVX2", False), ("avx512", False), ("AVX512_256", False),
                                        ("AVX512_E1", True), ("AVX512_E1_256", True), ("", True), ("junk", True)])
def test_fbgemms_own_cap_reaches_only_fbgemm(value, vnni):
    host = cpu.current({})
    got = cpu.current({"FBGEMM_ENABLE_INSTRUCTIONS": value})
    assert got.flags == host.flags and got.dot32("onednn") == host.dot32("onednn")
    assert got.dot32("fbgemm") == (vnni and host.dot32("fbgemm"))
    assert ("fbgemm_flags" in got.describe()) == (got.fbgemm_cap is not None)


def test_the_fbgemm_grid_follows_its_cap(monkeypatch):
    from bitladder.kernels.fbgemm_w8a8 import act_levels

    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    assert act_levels(127) == 127 and act_levels(64) == 255  # 7-bit weights cannot saturate a pair sum
    assert act_levels(127, "onednn") == (255 if cpu.current().dot32("onednn") else 127)


def test_cpuinfo_gives_the_first_cpus_generation_behind_a_masked_model_name(tmp_path):
    from bitladder.kernels.cpu import Cpu, read_cpuinfo

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: avx2 avx512f avx512_vpopcntdq\n\n"
                    "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 143\nstepping\t: 8\n")
    model, vendor, flags, ident = read_cpuinfo(str(info))
    assert (model, vendor, ident) == ("AMD EPYC", "AuthenticAMD", (25, 17, 1))  # the first CPU's numbers only
    assert {"avx2", "avx512f", "vpopcntdq"} <= flags
    assert Cpu(model, flags, flags, ident=ident).describe()["cpu_id"] == {"family": 25, "model": 17, "stepping": 1}
    info.write_text("processor\t: 0\nmodel name\t: Apple M2\n")  # no numbers: left out, not guessed
    assert read_cpuinfo(str(info))[3] is None and "cpu_id" not in Cpu("Apple M2", frozenset(), frozenset()).describe()
    assert read_cpuinfo(str(tmp_path / "missing"))[1:] == ("", frozenset(), None)


def test_the_host_is_what_cpuid_reports_within_cpuinfo(monkeypatch):
    every = frozenset(cpu.FEATURES)  # an emulator passes the host's /proc/cpuinfo through; its cpuid says AVX2
    monkeypatch.setattr(cpu, "read_cpuinfo", lambda: ("Xeon", "GenuineIntel", every, (6, 167, 1)))
    monkeypatch.setattr(cpu, "cpuid_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(cpu, "cpuid_identity", lambda: ("Haswell", "GenuineIntel", (6, 60, 1)))
    cpu._host.cache_clear()
    try:
        got = cpu.current({})
        assert got.host_flags == {"avx2"} and not got.dot32("onednn") and not got.dot32("fbgemm")
        assert got.describe()["cpu"] == "Haswell"  # the CPU the flags come from names the result
        assert got.describe()["cpu_id"] == {"family": 6, "model": 60, "stepping": 1}
        monkeypatch.setattr(cpu, "cpuid_identity", lambda: None)  # no C extension: the file names it
        cpu._host.cache_clear()
        assert cpu.current({}).describe()["cpu_id"] == {"family": 6, "model": 167, "stepping": 1}
        monkeypatch.setattr(cpu, "read_cpuinfo", lambda: ("", "", frozenset(), None))  # not Linux: cpuid alone
        cpu._host.cache_clear()
        assert cpu.current({}).host_flags == {"avx2"}
        monkeypatch.setattr(cpu, "read_cpuinfo", lambda: ("Xeon", "GenuineIntel", every, None))
        monkeypatch.setattr(cpu, "cpuid_flags", lambda: None)  # no C extension: /proc/cpuinfo alone
        cpu._host.cache_clear()
        assert cpu.current({}).host_flags == every
    finally:
        cpu._host.cache_clear()  # the next caller reads this machine again


@pytest.mark.skipif(cpu.cpuid_flags() is None, reason="needs the C extension on x86-64")
def test_cpuid_agrees_with_the_c_kernels_own_dispatch():
    from bitladder.kernels import _lowbit

    probed = cpu.cpuid_flags()
    assert probed <= set(cpu.FEATURES) and ("avx2" in probed) == _lowbit.has_avx2()
    assert cpu.current({}).host_flags <= probed
    if "avx512f" not in probed:  # the 512-bit extensions only with AVX-512 F itself
        assert not probed & {"avx512bw", "avx512_vnni", "avx512_bf16", "vpopcntdq"}
    aten = torch.backends.cpu.get_cpu_capability()  # torch's own cpuid reading (ATEN_CPU_CAPABILITY can only lower it)
    assert aten not in ("AVX2", "AVX512") or "avx2" in probed
    assert aten != "AVX512" or {"avx512f", "avx512bw"} <= probed


@pytest.mark.skipif(cpu.cpuid_identity() is None or "BITLADDER_EMULATED" in os.environ
                    or not os.path.exists("/proc/cpuinfo"), reason="needs the C extension and Linux, not emulated")
def test_cpuid_names_the_cpu_as_linux_does():
    model, vendor, _, ident = cpu.read_cpuinfo()
    name, probed_vendor, probed_ident = cpu.cpuid_identity()
    assert (probed_vendor, probed_ident) == (vendor, ident)
    assert " ".join(name.split()) == " ".join(model.split()) or not name  # Linux strips the padding


@pytest.mark.skipif("BITLADDER_EMULATED" not in os.environ, reason="make test-emulated's workers only")
def test_the_emulated_cpu_is_the_one_named():
    level = os.environ["BITLADDER_EMULATED"]  # qemu's CPU: every library must see it, not the host's
    assert cpu.current({}).host_flags == cpu.LEVELS[level]
    assert torch.backends.cpu.get_cpu_capability() == {"avx2": "AVX2", "default": "DEFAULT"}[level]
    assert {"avx2": "Haswell", "default": "Nehalem"}[level] in cpu.current({}).model  # not the host's name
