"""Lossless coding of an export's byte tensors in standard formats: an XZ stream or a Zstandard frame, whichever
is smaller.

Both formats record the decoded length and a checksum of the content (XZ: CRC64; Zstandard: XXH64), so a
truncated or altered stream is refused on reading, never decoded into other codes. Why two: measured on this
project's codes (``scripts/bench_coding.py``, benchmarks/coding_cpu_avx2.md), MLP weight codes are nearly
uniform bytes without repeats, which XZ's adaptive range coder (LZMA2 with no literal context, ``lc=lp=pb=0``)
brings close to their order-0 entropy while Zstandard's Huffman literals leave them as they are; hash tables hold
long runs of never-trained entries, which Zstandard's matches code better. An order-0 ANS coder
(constriction) was measured too: its per-tensor symbol table costs more than it gains over XZ on MLP weights.
"""

from __future__ import annotations

import lzma
from typing import Dict, Tuple

CODECS = ("xz", "zstd")
"""The codecs of format version 2 (their names in the file's ``coding`` metadata)."""
ZSTD_LEVEL = 19
"""Zstandard compression level (zstd decodes at the same speed whatever the level)."""
XZ_FILTERS = ({"id": lzma.FILTER_LZMA2, "preset": 9, "lc": 0, "lp": 0, "pb": 0},)
"""LZMA2 at preset 9, literals coded without context (codes carry none in their neighbours' bits)."""


class CodingError(ValueError):
    """A coded stream that does not decode to what its metadata says."""


def encode_all(data: bytes) -> Dict[str, bytes]:
    """``data`` coded by every codec."""
    import zstandard

    zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return {
        "xz": lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=XZ_FILTERS),
        "zstd": zstd.compress(data),
    }


def encode(data: bytes) -> Tuple[str, bytes]:
    """``(codec, stream)``: ``data`` in the codec that makes it smallest."""
    return min(encode_all(data).items(), key=lambda item: (len(item[1]), item[0]))


def decode(codec: str, stream: bytes, nbytes: int) -> bytes:
    """The ``nbytes`` bytes a stream of ``encode`` holds; ``CodingError`` if the codec is unknown or the stream is
    truncated, altered (checksum), followed by other bytes or holds another length."""
    if codec == "xz":
        data = _decode_xz(stream)
    elif codec == "zstd":
        data = _decode_zstd(stream, nbytes)
    else:
        raise CodingError(f"unknown codec {codec!r} (this nerf-qat reads {', '.join(CODECS)})")
    if len(data) != nbytes:
        raise CodingError(f"decoded {len(data)} bytes, {nbytes} expected")
    return data


def _decode_xz(stream: bytes) -> bytes:
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        data = decoder.decompress(stream)
    except lzma.LZMAError as err:
        raise CodingError(f"not a complete XZ stream ({err})") from None
    return _complete(decoder, data, "XZ stream")


def _decode_zstd(frame: bytes, nbytes: int) -> bytes:
    import zstandard

    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size != nbytes:
            raise CodingError(f"the frame holds {params.content_size} bytes, {nbytes} expected")
        if not params.has_checksum:
            raise CodingError("the frame has no checksum")
        decoder = zstandard.ZstdDecompressor().decompressobj()
        data = decoder.decompress(frame)
    except zstandard.ZstdError as err:
        raise CodingError(f"not a complete Zstandard frame ({err})") from None
    return _complete(decoder, data, "Zstandard frame")


def _complete(decoder, data: bytes, what: str) -> bytes:
    """``data``, if the streaming ``decoder`` (lzma's or zstandard's: both have ``eof`` and ``unused_data``) read
    exactly one whole stream; ``CodingError`` if it ended early or bytes followed."""
    if not decoder.eof:
        raise CodingError(f"the {what} is truncated")
    if decoder.unused_data:
        raise CodingError(f"{len(decoder.unused_data)} bytes follow the {what.split()[-1]}")
    return data
