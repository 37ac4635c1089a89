"""Lossless coding of an export's byte tensors: each one a Zstandard frame (RFC 8878) holding its size and checksum.

A frame records the decoded length and an XXH64 checksum of the content, so a truncated or altered stream is
refused on reading, never decoded into other codes. Level 19: exports are written once and read many times (zstd
decodes at the same speed whatever the level). Why Zstandard and not an order-0 range/ANS coder: measured on this
project's codes (``scripts/bench_coding.py``, benchmarks/coding_cpu_avx2.md): the two are within a few percent on
MLP weight codes, where each tensor's symbol table costs an ANS coder more than it saves, and Zstandard is far
smaller on hash tables, whose long runs of never-trained entries an order-0 coder cannot see.
"""

from __future__ import annotations

CODEC = "zstd"
"""The one codec of format version 2 (its name in the file's ``coding`` metadata)."""
LEVEL = 19
"""Zstandard compression level."""


class CodingError(ValueError):
    """A coded stream that does not decode to what its metadata says."""


def encode(data: bytes) -> bytes:
    """``data`` as one Zstandard frame with its content size and checksum."""
    import zstandard

    return zstandard.ZstdCompressor(level=LEVEL, write_checksum=True, write_content_size=True).compress(data)


def decode(frame: bytes, nbytes: int) -> bytes:
    """The ``nbytes`` bytes a frame of ``encode`` holds; ``CodingError`` if it is truncated, altered (checksum) or
    holds another length."""
    import zstandard

    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size != nbytes:
            raise CodingError(f"the frame holds {params.content_size} bytes, {nbytes} expected")
        if not params.has_checksum:
            raise CodingError("the frame has no checksum")
        stream = zstandard.ZstdDecompressor().decompressobj()
        data = stream.decompress(frame)
    except zstandard.ZstdError as err:
        raise CodingError(f"not a complete Zstandard frame ({err})") from None
    if not stream.eof:
        raise CodingError("the frame is truncated")
    if stream.unused_data:
        raise CodingError(f"{len(stream.unused_data)} bytes follow the frame")
    if len(data) != nbytes:
        raise CodingError(f"decoded {len(data)} bytes, {nbytes} expected")
    return data
