"""Context recovery by replay: feed the window before a partition's committed offset into a callback.

A stateful role keeps no durable state of its own. On assignment (and after an aborted batch) it reads
its input partition from ``window_ms`` of broker time before the committed offset up to that offset,
decodes each message and hands it to ``observe``. Reads only; publishes nothing. Any replica therefore
rebuilds the same context for the same partition.

Example::

    n = replay(settings, TopicPartition(topic, 3, committed), window_ms, decode, ctx.observe)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from .settings import Settings

T = TypeVar("T")
READ_FETCH_WAIT_MS = 20
"""fetch.wait.max.ms of a rebuild's reader (:func:`log_reader`): the broker answers a fetch at once when it
has data, and only an exhausted partition waits, so the wait is what the last fetch of each read costs
(librdkafka's 500 ms default: half a second per partition rebuilt)."""


def log_reader(settings: Settings, purpose: str) -> Consumer:
    """A consumer for reading partitions of the log to their end during a rebuild (a replay, the correlator's
    holdings): a group of its own that commits nothing, committed records only, the end reported
    (``enable.partition.eof``: with read_committed, at the last stable offset), a short fetch wait."""
    return Consumer(settings.kafka_config(**{
        "group.id": f"agentgov-{purpose}-{uuid.uuid4()}", "enable.auto.commit": False,
        "enable.partition.eof": True, "isolation.level": "read_committed",
        "fetch.wait.max.ms": READ_FETCH_WAIT_MS}))


def replay(settings: Settings, tp: TopicPartition, window_ms: int, decode: Callable[[Message], T | None],
           observe: Callable[[T], object], *, max_events: int = 200_000, max_seconds: float = 120.0) -> int:
    """Replay ``[committed - window, committed)`` of ``tp`` into ``observe``; returns events observed.

    ``window_ms == 0`` means "the last ``max_events`` messages". A message ``decode`` turns into None
    (undecodable, dead-lettered at the time) is skipped."""
    end = tp.offset  # exclusive
    if end in (OFFSET_INVALID,) or end <= 0:
        return 0
    reader = log_reader(settings, "replay")
    try:
        last = read_one(reader, tp.topic, tp.partition, end - 1)
        start = max(0, end - max_events)
        if last is not None and window_ms:
            ts = last.timestamp()[1] - window_ms
            found = offsets_for_time(reader, TopicPartition(tp.topic, tp.partition, max(ts, 0)))
            if found and found[0].offset >= 0:
                start = max(start, found[0].offset)
        reader.assign([TopicPartition(tp.topic, tp.partition, start)])
        count = 0
        deadline = time.monotonic() + max_seconds
        offset = start
        while offset < end and time.monotonic() < deadline:
            # Ask for what is left, not a fixed batch: consume() waits for its count or its timeout, and a
            # replay of a few hundred messages waited the whole timeout, on every partition it rebuilt.
            for msg in reader.consume(min(1000, end - offset), 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        offset = end  # nothing readable is left below the end (only control records)
                    continue
                offset = msg.offset() + 1
                if msg.offset() >= end:
                    break
                item = decode(msg)
                if item is not None:
                    observe(item)
                    count += 1
        return count
    finally:
        reader.close()


def offsets_for_time(reader: Consumer, tp: TopicPartition, attempts: int = 4) -> list[TopicPartition]:
    """``offsets_for_times`` with retries: while a partition's leader is failing over, the lookup times
    out or names no leader for a few seconds. Raises the last KafkaException if it never answers."""
    for attempt in range(1, attempts + 1):
        try:
            return list(reader.offsets_for_times([tp], timeout=10))
        except KafkaException:
            if attempt == attempts:
                raise
            time.sleep(min(2.0 * attempt, 5.0))
    return []


def read_one(reader: Consumer, topic: str, partition: int, offset: int) -> Message | None:
    """The message at ``offset`` (or the next readable one), or None within 10 s or at the partition's end
    (with ``enable.partition.eof``)."""
    reader.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is None:
            continue
        err = msg.error()
        if err is None:
            return msg
        if err.code() == KafkaError._PARTITION_EOF:
            return None
    return None
