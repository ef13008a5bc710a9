"""The store writer: assessments topic -> ClickHouse, at least once, written idempotently.

It never decodes Avro in Python. Each message's payload (after the wire header) is a raw
``RiskAssessment`` datum; a batch is wrapped into one Avro container per partition and inserted with
a dedup token ``topic-partition-first-last``. Offsets are committed only after the insert returned.
While the store fails, the writer pauses fetching, backs off, and retries the same batch.

Example::

    writer = Writer(settings, Metrics(), ClickHouseSink.connect(settings))
    writer.run(stop)
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from .deadletters import dlq_headers
from .errors import DecodeError, SinkError
from .loop import record_lag
from .metrics import Metrics
from .schemas import ASSESSMENT, SchemaSet
from .serde import CONFLUENT_HEADER, CONFLUENT_MAGIC, SOE_HEADER, SOE_MAGIC, make_registry
from .settings import Settings
from .sinks.clickhouse import ClickHouseSink
from .sinks.ocf import ContainerBuilder

log = logging.getLogger(__name__)

Groups = dict[bytes, tuple[ContainerBuilder, list[bytes]]]
"""Wire header -> (container builder for that writer schema, raw datums)."""


class Writer:
    role = "writer"

    def __init__(self, settings: Settings, metrics: Metrics, sink: ClickHouseSink, *, registry: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sink = sink
        self.schemas = SchemaSet.load()
        self.registry = registry if registry is not None else make_registry(settings)
        self._builders: dict[bytes, tuple[int, ContainerBuilder]] = {}
        self.consumer = Consumer(settings.consumer_config(settings.writer_group, **{
            "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 8388608}))
        self.dlq = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all"}))
        self.stored = 0
        self.backoff_max = 10.0
        self.tasks: list[list[Any]] = []  # [interval, next_due, fn]: work that needs the store's client
        self.add_task(2.0, lambda: record_lag(self.consumer, self.metrics, self.role))
        self.pending: list[Message] = []  # consumed, not yet stored

    def add_task(self, interval: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` every ``interval`` seconds from the writer loop (the thread that owns the client)."""
        self.tasks.append([interval, time.monotonic() + interval, fn])

    def _run_tasks(self) -> None:
        now = time.monotonic()
        for task in self.tasks:
            if now >= task[1]:
                task[2]()
                task[1] = time.monotonic() + task[0]

    # -- framing ------------------------------------------------------------------------------
    def _builder(self, value: bytes) -> tuple[int, ContainerBuilder]:
        """Header length and container builder for this message's writer schema."""
        if value[:2] == SOE_MAGIC:
            key = value[:SOE_HEADER]
            hit = self._builders.get(key)
            if hit:
                return hit
            sv = self.schemas.by_fingerprint.get(value[2:SOE_HEADER])
            if sv is None or sv.record != ASSESSMENT:
                raise DecodeError(f"unknown assessment fingerprint {value[2:SOE_HEADER].hex()}",
                                  reason="unknown_schema")
            hit = self._builders[key] = (SOE_HEADER, ContainerBuilder(sv.raw))
            return hit
        if value[:1] == CONFLUENT_MAGIC and len(value) >= CONFLUENT_HEADER:
            key = value[:CONFLUENT_HEADER]
            hit = self._builders.get(key)
            if hit:
                return hit
            if self.registry is None:
                raise DecodeError("registry-framed assessment but no registry configured", reason="unknown_schema")
            import json

            schema = json.loads(self.registry.get_schema(int.from_bytes(value[1:5], "big")).schema_str)
            hit = self._builders[key] = (CONFLUENT_HEADER, ContainerBuilder(schema))
            return hit
        raise DecodeError("assessment without a known wire header", reason="bad_magic")

    # -- loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event, on_stored: Callable[[int], None] | None = None) -> None:
        self.consumer.subscribe([self.settings.topic_assessments], on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.metrics.up.labels(role=self.role).set(1)
        started = time.monotonic()
        try:
            while not stop.is_set():
                room = self.settings.writer_batch_rows - len(self.pending)
                msgs = self.consumer.consume(min(room, 10000), 0.1)
                self.pending.extend(m for m in msgs if self._keep(m))
                full = len(self.pending) >= self.settings.writer_batch_rows
                due = time.monotonic() - started >= self.settings.writer_batch_seconds
                if self.pending and (full or due):
                    batch, self.pending = self.pending, []
                    self._flush(batch, stop)
                    if on_stored is not None:
                        on_stored(len(batch))
                if full or due or not self.pending:
                    started = time.monotonic()
                if self.tasks:
                    self._run_tasks()  # each task is time-gated; lag must be fresh under load too
            if self.pending:
                batch, self.pending = self.pending, []
                self._flush(batch, stop)  # SIGTERM: finish the batch in flight
        finally:
            self.metrics.up.labels(role=self.role).set(0)
            self.close()

    def _keep(self, msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error", extra={"kv": {"error": str(err)}})
        return False

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Store and commit what was consumed from the revoked partitions before letting them go.

        Runs inside ``consume()``/``poll()``, so it must not poll: one store attempt, no backoff. If the
        store fails, the messages are dropped from this writer uncommitted and the next owner re-reads
        them (at least once; the store dedups)."""
        revoked = {p.partition for p in partitions}
        mine = [m for m in self.pending if m.partition() in revoked]
        self.pending = [m for m in self.pending if m.partition() not in revoked]
        if mine:
            stored = self._flush(mine, None)
            log.info("revoked partitions flushed" if stored else "revoked partitions left unstored",
                     extra={"kv": {"partitions": sorted(revoked), "messages": len(mine)}})
        log.info("partitions revoked", extra={"kv": {"partitions": sorted(revoked)}})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Lost partitions may already belong to someone else: commit nothing, let the owner re-read them."""
        lost = {p.partition for p in partitions}
        self.pending = [m for m in self.pending if m.partition() not in lost]
        log.warning("partitions lost", extra={"kv": {"partitions": sorted(lost)}})

    def _flush(self, msgs: list[Message], stop: threading.Event | None) -> bool:
        """Store and commit one batch, retrying while the store fails. False if stopped before storing.

        ``stop=None`` means one attempt only (inside a rebalance callback, where polling is not allowed)."""
        by_part: dict[int, list[Message]] = defaultdict(list)
        for msg in msgs:
            by_part[msg.partition()].append(msg)
        delay = 0.2
        attempt = 0
        groups, spans = self._group(by_part)  # dead letters go out once, not once per retry
        while True:
            try:
                self._insert(groups, spans)
                break
            except SinkError as exc:
                attempt += 1
                self.metrics.sink_errors.labels(table="ingest", kind=exc.fields.get("kind", "unknown")).inc()
                log.error("store write failed; will retry", extra={"kv": {"attempt": attempt, "error": exc.message}})
                if stop is None:
                    return False
                self._pause(True)
                if stop.is_set():
                    log.warning("stopping with an unstored batch; it will be redelivered",
                                extra={"kv": {"messages": len(msgs)}})
                    return False
                self._wait(delay)
                delay = min(delay * 2, self.backoff_max)
        if stop is not None:
            self._pause(False)
        offsets = [TopicPartition(self.settings.topic_assessments, p, ms[-1].offset() + 1) for p, ms in by_part.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # Stored but not committed (e.g. the partitions moved during an outage, or the broker is
            # restarting): the next owner re-reads them and the store's dedup absorbs the repeat.
            log.warning("commit failed after store; batch will be redelivered",
                        extra={"kv": {"error": str(exc), "messages": len(msgs)}})
        now = time.time()
        self.metrics.last_stored.set(now)
        for msg in msgs:
            for key, value in msg.headers() or ():
                if key == "occurred_at":
                    self.metrics.event_to_stored.observe(max(0.0, now - int(value) / 1000))
                    break
        self.stored += len(msgs)
        return True

    def _group(self, by_part: dict[int, list[Message]]) -> tuple[Groups, str]:
        """Raw datums grouped by writer schema, and the batch's offset spans (for the dedup token)."""
        # One insert per writer schema for the whole batch, not one per partition: every insert has a
        # fixed cost (a part in each table behind the materialized views) that dominates small batches.
        groups: Groups = {}
        spans = []
        for partition, msgs in by_part.items():
            spans.append(f"{partition}:{msgs[0].offset()}-{msgs[-1].offset()}")
            for msg in msgs:
                value = msg.value()
                try:
                    hlen, builder = self._builder(value)
                except DecodeError as exc:
                    self._dead_letter(msg, exc)
                    continue
                groups.setdefault(value[:hlen], (builder, []))[1].append(value[hlen:])
        return groups, ",".join(spans)

    def _insert(self, groups: Groups, batch: str) -> None:
        for header, (builder, datums) in groups.items():
            # Same messages -> same token, so a retried insert is dropped by ClickHouse's dedup window.
            token = f"{self.settings.topic_assessments}-{batch}-{header.hex()}"
            t0 = time.perf_counter()
            self.sink.insert_assessments(builder.build(datums), token)
            self.metrics.sink_insert_duration.labels(table="ingest").observe(time.perf_counter() - t0)
            self.metrics.sink_rows.labels(table="ingest").inc(len(datums))

    def _dead_letter(self, msg: Message, exc: DecodeError) -> None:
        self.dlq.produce(self.settings.topic_dlq, msg.value(), key=msg.key(), headers=dlq_headers(exc, exc.reason, msg))
        self.dlq.flush(10)
        self.metrics.dead_letters.labels(reason=exc.reason).inc()

    def _pause(self, paused: bool) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            (self.consumer.pause if paused else self.consumer.resume)(assignment)
        self.metrics.paused.labels(role=self.role).set(1 if paused else 0)

    def _wait(self, seconds: float) -> None:
        """Sleep while keeping group membership alive (poll returns nothing while paused)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.consumer.close()
        self.dlq.flush(10)
