"""Sub-byte packing of weight codes."""

import pytest
import torch

from nerfqat_plugin.quant.pack import pack_bits, packed_nbytes, unpack_bits


def test_four_bit_values_share_a_byte_low_nibble_first():
    packed = pack_bits(torch.tensor([0x1, 0xA, 0xF, 0x0]), 4)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0xA1, 0x0F]


def test_eight_bits_is_one_byte_per_value():
    assert pack_bits(torch.tensor([0, 7, 255]), 8).tolist() == [0, 7, 255]


def test_two_bit_packing_by_hand():
    # values 3,0,1,2 -> bits (lsb first) 11 00 10 01 -> byte 0b10_01_00_11 = 0x93
    assert pack_bits(torch.tensor([3, 0, 1, 2]), 2).tolist() == [0x93]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_roundtrip_and_size(bits):
    torch.manual_seed(bits)
    values = torch.randint(0, 2**bits, (37, 5))
    packed = pack_bits(values, bits)
    assert packed.numel() == packed_nbytes(values.numel(), bits)
    assert torch.equal(unpack_bits(packed, bits, values.numel()).reshape(37, 5), values)


def test_out_of_range_value_is_rejected():
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_bits(torch.tensor([16]), 4)
