"""The dead-letter topic for people: list, show and re-publish dead letters (``agentgov dlq``).

A dead letter keeps the rejected bytes (cut to fit, see ``deadletters.py``) and headers that say why and
where from. After the cause is fixed (a new scorer that knows a schema, a store column widened, a client
corrected), ``republish`` sends the original bytes back to the topic they came from, with the original
key, and a ``agentgov.republished.from`` header naming the dead letter. A cut or dropped payload cannot
be re-published: its headers give the original size and SHA-256 to find the original at its source.

Example::

    for letter in read(settings, reason="oversized"):
        print(letter.line())
    republish(settings, [letter])
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, Producer, TopicPartition

from .audit import inert, to_json
from .deadletters import header
from .errors import AgentgovError, DecodeError
from .schemas import SchemaSet
from .serde import Serde
from .settings import Settings


class DlqError(AgentgovError):
    """A dead letter cannot be found or re-published."""

    reason = "dlq"


@dataclass(frozen=True)
class Letter:
    """One dead letter as read from the topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"

    def get(self, name: str) -> str:
        return header(self.headers, name) or ""

    @property
    def reason(self) -> str:
        return self.get("agentgov.error.reason")

    @property
    def complete(self) -> bool:
        """True when the payload is the original message, whole (not cut, not dropped)."""
        return not (self.get("agentgov.payload.truncated") or self.get("agentgov.payload.dropped"))

    def line(self) -> str:
        source = f"{self.get('agentgov.source.topic')}[{self.get('agentgov.source.partition')}]" \
                 f"@{self.get('agentgov.source.offset')}"
        field = self.get("agentgov.error.field")
        size = self.get("agentgov.payload.bytes") or str(len(self.value))
        cut = "" if self.complete else " (payload cut)"
        return (f"{self.ref}  {self.reason:<15} {('field ' + field + ' ') if field else ''}from {inert(source)}  "
                f"{size} bytes{cut}  {inert(self.get('agentgov.error.message'))[:160]}")

    def show(self, schemas: SchemaSet | None = None) -> str:
        lines = [f"dead letter {self.ref}", f"  key: {inert((self.key or b'').decode('utf-8', 'replace'))}"]
        lines += [f"  {inert(k)}: {inert(bytes(v or b'').decode('utf-8', 'replace'))}" for k, v in self.headers]
        try:
            decoded = Serde(schemas or SchemaSet.load(), max_bytes=max(len(self.value), 1)).decode(self.value)
            lines.append("  payload (decoded): " + to_json(decoded.record))
        except DecodeError as exc:
            lines.append(f"  payload: {len(self.value)} bytes, not a decodable transition ({exc.reason}); "
                         f"first bytes {self.value[:48].hex()}")
        return "\n".join(lines)


def read(settings: Settings, *, reason: str | None = None, refs: Iterable[str] = (), timeout: float = 30.0
         ) -> list[Letter]:
    """Every dead letter on ``settings.topic_dlq`` (committed ones), optionally only one reason or the
    given ``partition:offset`` refs. Reads with a throw-away group and commits nothing."""
    wanted = set(refs)
    consumer = Consumer(settings.consumer_config(f"agentgov-dlq-reader-{uuid.uuid4().hex[:8]}",
                                                 **{"enable.partition.eof": True}))
    try:
        meta = consumer.list_topics(settings.topic_dlq, timeout=timeout)
        topic = meta.topics.get(settings.topic_dlq)
        if topic is None or topic.error is not None:
            raise DlqError(f"dead-letter topic {settings.topic_dlq} not found")
        ends = {}
        for p in topic.partitions:
            _, high = consumer.get_watermark_offsets(TopicPartition(settings.topic_dlq, p), timeout=timeout)
            if high > 0:
                ends[p] = high
        consumer.assign([TopicPartition(settings.topic_dlq, p, 0) for p in ends])
        out: list[Letter] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                p = msg.partition()
                if msg.error() is not None:
                    if p is not None:
                        done.add(p)  # end of partition (or an error on it): stop waiting for it
                    continue
                if p is None or msg.offset() is None:
                    continue
                if msg.offset() + 1 >= ends.get(p, 0):
                    done.add(p)
                letter = Letter(p, msg.offset() or 0, msg.key(), msg.value() or b"", tuple(msg.headers() or ()))
                if reason and letter.reason != reason:
                    continue
                if wanted and letter.ref not in wanted:
                    continue
                out.append(letter)
        return sorted(out, key=lambda x: (x.partition, x.offset))
    finally:
        consumer.close()


def replay_topics(settings: Settings) -> tuple[str, ...]:
    """The topics a dead letter may be re-published to: the pipeline's inputs whose dead letters the runbooks
    replay after a fix (docs/runbooks/dead-letters.md: transitions the scorers refused; poison-records.md:
    assessments the store refused). Not the topics people's records or followed state travel on (decisions,
    exceptions, baselines, facts, delegations): a dead letter's headers are only its sender's word, and a
    forged one naming the baselines topic was re-published there."""
    return (settings.topic_transitions, settings.topic_assessments)


def refusal(settings: Settings, letter: Letter) -> str | None:
    """Why ``letter`` cannot be re-published (one line naming it), or None if it can."""
    topic = letter.get("agentgov.source.topic")
    if not topic:
        return f"dead letter {letter.ref} names no source topic"
    if topic not in replay_topics(settings):
        return (f"dead letter {letter.ref} names source topic {inert(topic)[:200]!r}, not one dead letters are "
                f"re-published to ({', '.join(replay_topics(settings))})")
    return None


def republish(settings: Settings, letters: Iterable[Letter]) -> int:
    """Send each letter's original bytes back to its source topic; returns how many were confirmed.
    Raises :class:`DlqError` for a letter whose payload was cut or that :func:`refusal` refuses (the CLI
    leaves those out, one message each), or on a delivery failure."""
    letters = list(letters)
    for letter in letters:
        if not letter.complete:
            raise DlqError(f"dead letter {letter.ref} holds a cut payload ({letter.get('agentgov.payload.bytes')} "
                           f"bytes originally, sha256 {letter.get('agentgov.payload.sha256')[:16]}…): find the "
                           f"original at its source")
        refused = refusal(settings, letter)
        if refused is not None:
            raise DlqError(refused)
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all",
                                                 "message.max.bytes": settings.max_message_bytes}))
    failed: list[str] = []

    def confirm(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(str(err))

    for letter in letters:
        producer.produce(letter.get("agentgov.source.topic"), letter.value, key=letter.key,
                         headers=[("agentgov.republished.from", f"{settings.topic_dlq}:{letter.ref}".encode())],
                         on_delivery=confirm)
    remaining = producer.flush(30)
    if remaining or failed:
        raise DlqError(f"re-publish not confirmed: {remaining} pending, {len(failed)} failed "
                       f"({failed[0] if failed else 'timeout'})")
    return len(letters)
