import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitladder.formats import packing


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_bits_round_trip_exact_size(bits, data):
    codes = data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=0, max_size=300))
    t = torch.tensor(codes, dtype=torch.int64)
    p = packing.pack_bits(t, bits)
    assert p.dtype == torch.uint8
    assert p.numel() == packing.packed_nbytes(len(codes), bits) == -(-len(codes) * bits // 8)
    assert packing.unpack_bits(p, bits, len(codes)).tolist() == codes


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=300))
def test_pack_ternary_round_trip_five_per_byte(codes):
    p = packing.pack_ternary(torch.tensor(codes, dtype=torch.int64))
    assert p.numel() == -(-len(codes) // 5)
    assert packing.unpack_ternary(p, len(codes)).tolist() == codes


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7])
def test_general_and_fast_paths_share_the_documented_layout(bits):
    # the stream layout: element i occupies bits [b*i, b*i+b), LSB first
    g = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2**bits, (77,), generator=g)
    stream = "".join(format(int(c), f"0{bits}b")[::-1] for c in codes)
    stream += "0" * ((-len(stream)) % 8)
    want = [int(stream[i : i + 8][::-1], 2) for i in range(0, len(stream), 8)]
    assert packing.pack_bits(codes, bits).tolist() == want


def test_four_bit_is_low_nibble_first():
    assert packing.pack_bits(torch.tensor([1, 2]), 4).tolist() == [0x21]


def test_bad_codes_and_sizes_are_rejected():
    with pytest.raises(ValueError, match="codes must lie"):
        packing.pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="codes must lie"):
        packing.pack_ternary(torch.tensor([3]))
    with pytest.raises(ValueError, match="bits must be in 1..8"):
        packing.pack_bits(torch.tensor([0]), 9)
    with pytest.raises(ValueError, match="cannot hold"):
        packing.unpack_bits(torch.zeros(2, dtype=torch.uint8), 4, 5)
