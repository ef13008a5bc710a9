"""The benchmark's events: benign workload drafts completed by the SDK once, encoded with the serde,
and produced as raw bytes so that pydantic never bounds the producer.

Example::

    pool = EventPool.build(200_000)                   # [(key, framed Avro bytes)]
    produce_all(bootstrap, topic, pool.messages)      # full speed
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Producer

from pipeline.publisher import TransitionPublisher
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.workload import Workload

Message = tuple[bytes, bytes]  # (key, value)

# The SDK's own producer settings (pipeline.publisher), so the topic looks as it would in production.
PRODUCER_CONFIG = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4",
                   "queue.buffering.max.messages": 500_000, "batch.num.messages": 10_000}


def _completer() -> TransitionPublisher:
    # complete() needs no broker; a placeholder producer keeps librdkafka out of it.
    settings = Settings.load(kafka_bootstrap="127.0.0.1:9")
    return TransitionPublisher(settings, serde=Serde(SchemaSet.load()), producer=object())  # type: ignore[arg-type]


def drafts(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """``count`` benign drafts (joiner/mover/leaver/request/auth runs), no planted violations."""
    out = [op.payload for op in Workload(seed=seed, planted=False, bad_inputs=False).ops(count)]
    return out[:count]


@dataclass
class EventPool:
    messages: list[Message]
    seconds: float  # wall time to complete and encode them
    mean_bytes: float

    @classmethod
    def build(cls, count: int, seed: int = 7, occurred_at_ms: Sequence[int] | None = None) -> EventPool:
        """Complete ``count`` drafts through the SDK and encode them. ``occurred_at_ms[i]``, if given, is
        stamped into event ``i`` before its hash is computed (paced runs: the planned send time)."""
        started = time.perf_counter()
        pub = _completer()
        messages: list[Message] = []
        for i, draft in enumerate(drafts(count, seed)):
            if occurred_at_ms is not None:
                draft = dict(draft, occurred_at=datetime.fromtimestamp(occurred_at_ms[i] / 1000, UTC))
            record = pub.complete(draft)
            messages.append((record["run_id"].encode(), pub.serde.encode(record)))
        seconds = time.perf_counter() - started
        mean = sum(len(v) for _, v in messages) / max(1, len(messages))
        return cls(messages, seconds, mean)


def producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, **PRODUCER_CONFIG})


def produce_all(bootstrap: str, topic: str, messages: Sequence[Message]) -> tuple[float, dict[int, int]]:
    """Produce every message as fast as the client allows. Returns events/s (to acknowledged delivery) and
    the count delivered to each partition (the broker's watermarks under-report, so count here)."""
    p = producer(bootstrap)
    counts: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            counts[msg.partition()] = counts.get(msg.partition(), 0) + 1

    started = time.perf_counter()
    produce = p.produce
    for key, value in messages:
        while True:
            try:
                produce(topic, value, key=key, on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.01)
    remaining = p.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} benchmark events undelivered")
    return len(messages) / (time.perf_counter() - started), counts


def produce_paced(p: Producer, topic: str, messages: Sequence[Message], rate: float, start: float) -> float:
    """Send message ``i`` at ``start + i / rate`` (wall clock, the time stamped into its occurred_at).

    Sends whatever is due, then sleeps a millisecond, so no event leaves more than about 1 ms after its
    stamp unless the producer itself falls behind. Returns the largest lag behind schedule in seconds."""
    n = len(messages)
    sent, worst = 0, 0.0
    produce = p.produce
    while sent < n:
        now = time.time()
        due = min(n, int((now - start) * rate) + 1) if now >= start else 0
        if due > sent:
            worst = max(worst, now - (start + sent / rate))
        while sent < due:
            key, value = messages[sent]
            try:
                produce(topic, value, key=key)
            except BufferError:
                p.poll(0.005)
                continue
            sent += 1
        p.poll(0)
        time.sleep(0.001)
    if p.flush(60):
        raise RuntimeError("paced benchmark events undelivered")
    return worst
