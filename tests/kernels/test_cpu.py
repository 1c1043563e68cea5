"""BITLADDER_CPU caps the features kernels see: a level is a ceiling, never more than the host has."""

import pytest

from bitladder.errors import BitladderError
from bitladder.kernels import cpu


@pytest.mark.parametrize("level", ["default", "avx2", "avx512", "avx512-vnni", "avx512-bf16", "amx"])
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
    names = ["default", "avx2", "avx512", "avx512-vnni", "avx512-bf16", "amx"]
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
