"""Avro object-container files built by byte concatenation, with no decoding in Python.

A batch of raw datums (the payload after the wire header) plus the writer schema is a valid OCF:
header, then one block of ``count``, ``size``, the datums, and the sync marker. ClickHouse parses it
in C++ (``FORMAT Avro``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from fastavro import writer as ocf_writer


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def avro_string(data: bytes) -> bytes:
    """The Avro encoding of a string given as its UTF-8 bytes (the length as a zigzag varint, then the bytes)."""
    return _zigzag(len(data)) + bytes(data)


class ContainerBuilder:
    """Wraps raw datums of one writer schema into an OCF.

    Example::

        builder = ContainerBuilder(schema_dict)
        data = builder.build([datum1, datum2])
    """

    def __init__(self, schema: dict[str, object]) -> None:
        buf = io.BytesIO()
        ocf_writer(buf, schema, [], codec="null")
        self.header = buf.getvalue()
        self.sync = self.header[-16:]

    def build(self, datums: Sequence[bytes | memoryview]) -> bytes:
        body = b"".join(datums)
        return b"".join((self.header, _zigzag(len(datums)), _zigzag(len(body)), body, self.sync))
