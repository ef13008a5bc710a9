"""Dead-letter headers: why a message was set aside, and where it came from. Shared by every role."""

from __future__ import annotations

from confluent_kafka import Message


def dlq_headers(exc: BaseException, reason: str, msg: Message) -> list[tuple[str, bytes]]:
    return [
        ("agentgov.error.class", type(exc).__name__.encode()),
        ("agentgov.error.reason", reason.encode()),
        ("agentgov.error.message", str(exc)[:1000].encode("utf-8", "replace")),
        ("agentgov.source.topic", (msg.topic() or "").encode()),
        ("agentgov.source.partition", str(msg.partition()).encode()),
        ("agentgov.source.offset", str(msg.offset()).encode()),
    ]
