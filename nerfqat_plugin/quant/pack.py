"""Sub-byte packing of integer codes: ``bits`` bits per value, little-endian bit order, no padding between values."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` values of ``bits`` bits occupy once packed."""
    return math.ceil(numel * bits / 8)


def pack_bits(values: Tensor, bits: int) -> Tensor:
    """Pack unsigned integers ``0 <= v < 2**bits`` into a flat uint8 tensor of ``packed_nbytes`` bytes.

    Value ``i`` occupies bits ``[i * bits, (i + 1) * bits)`` of the stream, least significant bit first;
    with 8 bits this is one byte per value, with 4 bits two values per byte (the first in the low nibble).
    """
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"pack_bits: values must lie in [0, {2**bits - 1}] for {bits} bits")
    shifts = torch.arange(bits, device=flat.device)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8)
    return (stream << torch.arange(8, device=flat.device)).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of ``pack_bits``: the first ``numel`` values, as int64."""
    if packed.numel() != packed_nbytes(numel, bits):
        raise ValueError(f"unpack_bits: {packed.numel()} bytes cannot hold exactly {numel} values of {bits} bits")
    stream = ((packed.reshape(-1, 1).to(torch.int64) >> torch.arange(8, device=packed.device)) & 1).reshape(-1)
    stream = stream[: numel * bits].reshape(numel, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(dim=1)
