"""Helpers the tests share: reading topics, committed offsets, ``/metrics`` samples, waiting, and the
in-process scorer + writer pair.

Example::

    msgs = consume(settings, settings.topic_assessments, count=10)
    keys = topic_keys(settings, settings.topic_assessments)          # reads until the topic is idle
    assert wait_until(lambda: scrape(port)[("agentgov_events_total", ())] > 0, timeout=30)
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pipeline.consumer import Scorer
from pipeline.kraft import KraftCluster
from pipeline.metrics import Metrics
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.writer import Writer


class Bus:
    """The broker a parametrized test runs on (the ``bus`` fixture): its bootstrap and the topic
    replication it supports."""

    def __init__(self, kind: str, bootstrap: str, replication: int, cluster: KraftCluster | None = None) -> None:
        self.kind = kind
        self.bootstrap = bootstrap
        self.replication = replication
        self.cluster = cluster

    def __repr__(self) -> str:
        return f"Bus({self.kind})"


def consume(settings: Settings, topic: str, count: int, timeout: float = 60.0, settle: float = 0.0) -> list[Message]:
    """Read ``count`` messages of ``topic`` from the start (stops on the count, not on lag), then keep
    reading ``settle`` seconds more to catch any surplus."""
    consumer = Consumer(settings.consumer_config(f"reader-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (len(out) < count or settle):
            out.extend(m for m in consumer.consume(1000, 0.5) if not m.error())
            if settle and len(out) >= count:
                deadline = min(deadline, time.monotonic() + settle)
    finally:
        consumer.close()
    return out


def follow_until(settings: Settings, topic: str, found: Callable[[Message], bool], timeout: float = 90.0
                 ) -> Message | None:
    """The first message of ``topic`` (from its start, then as it grows) that ``found`` accepts, or None after
    ``timeout``. One reader throughout: a topic that grows faster than a reader's first fetch (a baseline
    refresh a second, over a module's tests) is never read to its end by a fresh reader per try."""
    reader = Consumer(settings.consumer_config(f"follow-{uuid.uuid4().hex[:8]}"))
    reader.subscribe([topic])
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in reader.consume(1000, 0.5):
                if not msg.error() and found(msg):
                    return msg
    finally:
        reader.close()
    return None


def wait_baseline(settings: Settings, agent_id: str, events: int, timeout: float = 90.0) -> dict[str, Any] | None:
    """The first baseline of ``agent_id`` on the baselines topic counting at least ``events`` events (the
    store owner's publisher refreshes them), or None after ``timeout``."""
    def complete(msg: Message) -> bool:
        doc = json.loads(msg.value())
        return bool(doc["agent_id"] == agent_id and doc["events"] >= events)
    found = follow_until(settings, settings.topic_baselines, complete, timeout)
    return None if found is None else dict(json.loads(found.value()))


def read_until_idle(settings: Settings, topic: str, idle: float = 5.0, *, batch: int = 1000,
                    assign_partitions: bool = False, **config: Any) -> Iterator[Message]:
    """Every message a reader (``read_committed`` unless ``config`` says otherwise) sees on ``topic`` from
    the start, until none came for ``idle`` seconds: Tansu under-reports high watermarks, so lag cannot
    tell the end. ``assign_partitions`` reads every partition without joining a group."""
    reader = Consumer(settings.consumer_config(f"read-{uuid.uuid4().hex[:8]}", **config))
    if assign_partitions:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(settings.topic_partitions)])
    else:
        reader.subscribe([topic])
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            for msg in reader.consume(batch, 0.5):
                if msg.error():
                    continue
                last = time.monotonic()
                yield msg
    finally:
        reader.close()


def topic_keys(settings: Settings, topic: str, idle: float = 5.0) -> Counter[bytes]:
    """Keys of every message a read_committed reader sees on ``topic`` (read until idle)."""
    return Counter(msg.key() for msg in read_until_idle(settings, topic, idle, batch=5000))


def committed(settings: Settings, group: str, topic: str) -> int:
    """The sum of ``group``'s committed offsets on ``topic`` (-1 when the broker cannot say right now)."""
    reader = Consumer(settings.kafka_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = reader.committed([TopicPartition(topic, p) for p in range(settings.topic_partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)
    except Exception:
        return -1
    finally:
        reader.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a live /metrics endpoint, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class FakeMessage:
    """A consumed record as confluent-kafka's ``Message`` answers for it, without a broker: ``log_ms`` is its
    CREATE_TIME timestamp (0: none available)."""

    def __init__(self, value: bytes = b"", *, topic: str = "t", partition: int = 0, offset: int = 0,
                 key: bytes | None = None, log_ms: int = 0) -> None:
        self._value, self._topic, self._partition, self._offset = value, topic, partition, offset
        self._key, self._log_ms = key, log_ms

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, self._log_ms) if self._log_ms > 0 else (0, -1)  # TIMESTAMP_CREATE_TIME, or NOT_AVAILABLE

    def error(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return []


class FakeProducer:
    """Records produce calls; ``fail`` makes every delivery report an error, as librdkafka would."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.pending: list[Any] = []
        self.fail = fail

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, value, key))
        self.pending.append(on_delivery)

    def poll(self, timeout: float = 0) -> int:
        return self.flush()

    def flush(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for cb in pending:
            cb(KafkaError(KafkaError._MSG_TIMED_OUT) if self.fail else None, None)
        return 0


class InProcess:
    """Scorer and writer threads in this process, sharing one (possibly mock) registry client."""

    def __init__(self, settings: Settings, registry: Any = None) -> None:
        self.settings = settings
        self.metrics = Metrics(CollectorRegistry())
        self.sink = ClickHouseSink.connect(settings)
        self.sink.migrate()
        self.scorer = Scorer(settings, self.metrics, load_policy(settings.policy_file), registry=registry)
        self.writer = Writer(settings, self.metrics, self.sink, registry=registry)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.scorer.run, args=(self.stop,), daemon=True),
                        threading.Thread(target=self.writer.run, args=(self.stop,), daemon=True)]
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)
