"""Dead letters: the record that carries a rejected message to ``agentgov.transitions.dlq``.

A dead letter always fits in one Kafka record: the payload is cut to ``Limits.dlq_payload_bytes`` (the
``agentgov.payload.bytes`` and ``agentgov.payload.sha256`` headers then describe the original), the key
to ``KEY_MAX_BYTES``, the error message to ``ERROR_MESSAGE_MAX_CHARS``. A dead letter that still cannot
be produced is sent again without its payload (``agentgov.payload.dropped``), so it always ends somewhere.

Headers (all UTF-8): ``agentgov.error.class``, ``agentgov.error.reason`` (closed set,
``errors.DLQ_REASONS``), ``agentgov.error.message``, ``agentgov.error.field`` (when known),
``agentgov.source.topic``/``partition``/``offset``, and the ``agentgov.payload.*`` headers above.

Example::

    value, key, headers = dead_letter(msg, exc, "oversized", limits)
    producer.produce(settings.topic_dlq, value, key=key, headers=headers)
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from confluent_kafka import KafkaError

from .limits import ERROR_MESSAGE_MAX_CHARS, KEY_MAX_BYTES, Limits

RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD,
                           KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE})
"""Produce errors that belong to one record (its size or content), not to the broker or the network: a record
that fails so is dead-lettered (its payload cut, or dropped) instead of failing the batch forever."""

Headers = list[tuple[str, bytes]]


class Source(Protocol):
    """What a dead letter needs of the rejected message (a confluent_kafka ``Message``)."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


def dlq_headers(exc: BaseException, reason: str, msg: Source) -> Headers:
    headers = [
        ("agentgov.error.class", type(exc).__name__.encode()),
        ("agentgov.error.reason", reason.encode()),
        ("agentgov.error.message", str(exc)[:ERROR_MESSAGE_MAX_CHARS].encode("utf-8", "replace")),
        ("agentgov.source.topic", (msg.topic() or "").encode()),
        ("agentgov.source.partition", str(msg.partition()).encode()),
        ("agentgov.source.offset", str(msg.offset()).encode()),
    ]
    field = getattr(exc, "fields", {}).get("field") if hasattr(exc, "fields") else None
    if field:
        headers.append(("agentgov.error.field", str(field)[:200].encode("utf-8", "replace")))
    return headers


def dead_letter(msg: Source, exc: BaseException, reason: str, limits: Limits, *, payload: bool = True
                ) -> tuple[bytes, bytes | None, Headers]:
    """(value, key, headers) of the dead letter for ``msg``; ``payload=False`` drops the payload."""
    value = msg.value() or b""
    key = msg.key()
    headers = dlq_headers(exc, reason, msg)
    cut = value[: limits.dlq_payload_bytes] if payload else b""
    if len(cut) != len(value):
        headers += [("agentgov.payload.bytes", str(len(value)).encode()),
                    ("agentgov.payload.sha256", hashlib.sha256(value).hexdigest().encode()),
                    ("agentgov.payload.dropped" if not payload else "agentgov.payload.truncated", b"1")]
    if key is not None and len(key) > KEY_MAX_BYTES:
        key = key[:KEY_MAX_BYTES]
    return cut, key, headers


def header(headers: Any, name: str) -> str | None:
    """One header's value as text, or None (``headers`` as a Message returns them)."""
    for k, v in headers or ():
        if k == name:
            return bytes(v).decode("utf-8", "replace") if v is not None else ""
    return None
