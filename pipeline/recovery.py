"""Context recovery by replay: feed the window before a partition's committed offset into a callback.

A stateful role keeps no durable state of its own. On assignment (and after an aborted batch) it reads
its input partition from ``window_ms`` of broker time before the committed offset up to that offset,
decodes each message and hands it to ``observe``. Reads only; publishes nothing. Any replica therefore
rebuilds the same context for the same partition.

Example::

    n = replay(settings, TopicPartition(topic, 3, committed), window_ms, decode, ctx.observe)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message, TopicPartition

from .settings import Settings

log = logging.getLogger(__name__)
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
           observe: Callable[[T], object], *, max_events: int | None = 200_000, max_seconds: float | None = 120.0,
           stall_seconds: float = 30.0, progress_every: float = 10.0) -> int:
    """Replay ``[committed - window, committed)`` of ``tp`` into ``observe``; returns events observed.

    ``window_ms == 0`` means "the last ``max_events`` messages". A message ``decode`` turns into None
    (undecodable, dead-lettered at the time) is skipped.

    Two modes. Capped (the scorer: its rules know how far back a rebuilt context is complete): at most
    ``max_events`` messages and ``max_seconds``, and what is left out is left out. Complete (the correlator,
    ``max_events=None, max_seconds=None``: a window cut short would miss chains, and judge differently from a
    replica that never restarted): the whole window, however long it takes, while messages keep coming; no
    message for ``stall_seconds`` raises ``KafkaException`` (the assignment is retried, never half rebuilt).
    Either way a replay longer than ``progress_every`` logs its progress."""
    end = tp.offset  # exclusive
    if end in (OFFSET_INVALID,) or end <= 0:
        return 0
    reader = log_reader(settings, "replay")
    try:
        start = 0 if max_events is None else max(0, end - max_events)
        if window_ms:
            skew_ms = settings.max_future_skew_seconds * 1000
            start = max(start, _window_start(reader, tp, end, window_ms, skew_ms))
        reader.assign([TopicPartition(tp.topic, tp.partition, start)])
        count = 0
        began = moved = time.monotonic()
        next_note = began + progress_every
        offset = start
        while offset < end:
            now = time.monotonic()
            if max_seconds is not None and now - began >= max_seconds:
                break  # capped: the caller's context says how far back it is complete
            if max_seconds is None and now - moved >= stall_seconds:
                raise KafkaException(KafkaError(
                    KafkaError._TIMED_OUT, f"replay of {tp.topic}[{tp.partition}] read nothing for "
                                           f"{stall_seconds:g}s at offset {offset} of {end}"))
            if now >= next_note:
                next_note = now + progress_every
                log.info("replaying", extra={"kv": {
                    "topic": tp.topic, "partition": tp.partition, "offset": offset, "from": start, "until": end,
                    "observed": count, "seconds": round(now - began, 1)}})
            # Ask for what is left, not a fixed batch: consume() waits for its count or its timeout, and a
            # replay of a few hundred messages waited the whole timeout, on every partition it rebuilt.
            for msg in reader.consume(min(1000, end - offset), 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        offset = end  # nothing readable is left below the end (only control records)
                    continue
                offset = msg.offset() + 1
                moved = time.monotonic()
                if msg.offset() >= end:
                    break
                item = decode(msg)
                if item is not None:
                    observe(item)
                    count += 1
        return count
    finally:
        reader.close()


def _window_start(reader: Consumer, tp: TopicPartition, end: int, window_ms: int, skew_ms: int) -> int:
    """The first offset of the window before ``end``: the broker's timestamp lookup, checked. A broker may
    answer it low (Tansu answers 0 for any time); then the first record at or after the window's start is
    found by bisection over the records' timestamps (a few dozen reads for millions of records), instead of
    reading the whole partition. Producers stamp records as they send them, so the timestamps rise with
    the offsets, to within the spread of the producers' clocks and batches."""
    ts = max(_window_start_ms(reader, tp, end, window_ms, skew_ms), 0)
    found = offsets_for_time(reader, TopicPartition(tp.topic, tp.partition, ts))
    lo = found[0].offset if found and found[0].offset >= 0 else 0
    lo = min(lo, end)
    first = read_one(reader, tp.topic, tp.partition, lo) if lo < end else None
    if first is None or first.offset() >= end or first.timestamp()[1] >= ts:
        return lo  # the lookup's answer holds (or nothing readable is left below the end)
    lo, hi = first.offset() + 1, end
    while lo < hi:
        mid = (lo + hi) // 2
        msg = read_one(reader, tp.topic, tp.partition, mid)
        if msg is None or msg.offset() >= hi or msg.timestamp()[1] >= ts:
            hi = mid  # only markers in [mid, hi), or a record within the window: the start is at or before mid
        else:
            lo = msg.offset() + 1
    return lo


def _window_start_ms(reader: Consumer, tp: TopicPartition, end: int, window_ms: int, skew_ms: int) -> int:
    """Broker time where the window before ``end`` starts: the timestamp of the last record below ``end``
    less the window. That timestamp is no later than now plus ``skew_ms`` (an event's allowed future skew):
    under CreateTime (and on Tansu whatever the topic says) a producer sets it, and one record stamped in
    year 9999 would otherwise move the window past every real record and empty the rebuild.
    A transactional producer's commit marker may stand at ``end - 1`` (and the one before it
    at ``end - 2``...): the record is looked for a few offsets back. With none found, the window is counted
    back from now (it ends at the committed offset, which is not later than now)."""
    for back in range(1, 4):
        if end - back < 0:
            break
        msg = read_one(reader, tp.topic, tp.partition, end - back)  # None at the partition's end, promptly
        if msg is not None and msg.offset() < end:
            return min(int(msg.timestamp()[1]), int(time.time() * 1000) + skew_ms) - window_ms
    return int(time.time() * 1000) - window_ms


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
