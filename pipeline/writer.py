"""The store writer: assessments topic -> ClickHouse, at least once, written idempotently.

It never decodes Avro in Python. Each message's payload (after the wire header) is a raw
``RiskAssessment`` datum, stored with the digest of its transition (the scorer's ``agentgov.source.digest``
header; for an older scorer's message, and for any copy of an event_id already stored, the writer reads
past the head to compute it) appended as a trailing ``source_digest`` field. First copy wins by the event_id
read from the datum; a message keyed by anything else is dead-lettered. A batch is wrapped into one Avro
container per writer schema and inserted with a dedup token ``topic-partition:first-last-schema-digest``
(the digest of the datums: offsets start again at 0 after a Tansu restart). Offsets are committed only after
the insert returned. While the store fails, the writer pauses fetching, backs off, and retries the same batch.

When the store refuses the *data* (``is_data_error``: e.g. an Avro int out of range, or error 252 for a batch
spanning too many partitions), the batch is bisected: halves are inserted with their own dedup tokens until
the refused rows stand alone. Those rows are dead-lettered with the store's error (reason ``store_rejected``),
the delivery is confirmed, and only then are offsets committed. Error 252 for "too many parts" (merges behind
inserts) is the store's backpressure, not the data's: retried with backoff like an outage.

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
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from .assessment import DIGEST_HEADER, digest_of_assessment, head_schema
from .deadletters import dead_letter
from .errors import DeadLetter, DecodeError, RegistryUnavailable, SinkError, ValidationError
from .limits import Limits
from .liveness import ConsumerStalled, StallWatch
from .loop import record_lag
from .membership import Membership
from .metrics import Metrics
from .schemas import ASSESSMENT, SchemaSet
from .serde import full_name, make_registry, registry_schema, split_header
from .settings import Settings
from .sinks.clickhouse import ClickHouseSink, content_digest
from .sinks.ocf import ContainerBuilder, avro_string

log = logging.getLogger(__name__)



class Group:
    """One writer schema's messages of a batch: the container builder and head schema of that schema, and per
    message its datum (the payload after the wire header), the event_id read from the datum, and the digest
    of its transition (``assessment.transition_digest``: the scorer's header, or computed from the datum,
    ``verified``)."""

    __slots__ = ("builder", "datums", "digests", "head", "ids", "msgs", "verified")

    def __init__(self, builder: ContainerBuilder, head: Any) -> None:
        self.builder, self.head = builder, head
        self.datums: list[bytes] = []
        self.msgs: list[Message] = []
        self.ids: list[str] = []
        self.digests: list[bytes] = []
        self.verified: list[bool] = []

    def digest(self, i: int) -> bytes:
        """The digest of message ``i``'s own transition, computed from its datum (about 15 µs) once, however
        often it is asked: the header is the sender's word, which a forged copy of a stored event can copy from
        the original's record along with its source headers."""
        if not self.verified[i]:
            self.digests[i], self.verified[i] = _digest(self.datums[i], self.head), True
        return self.digests[i]

    def row(self, i: int) -> bytes:
        """The stored row of message ``i``: the datum, then source_digest (an Avro string: 32 hex digits as a
        rule)."""
        digest = self.digests[i]
        return self.datums[i] + (_HEX32 + digest if len(digest) == 32 else avro_string(digest))


Groups = dict[bytes, Group]
"""Wire header -> that writer schema's messages of a batch."""
DIGEST_FIELD = {"name": "source_digest", "type": "string", "default": "",
                "doc": "transition_digest of the transition (migration 008): told apart from a rewrite at the "
                       "same source record."}
Rejected = list[tuple[Message, DeadLetter]]
T = TypeVar("T")


class MisKeyed(ValidationError):
    """An assessment whose Kafka key is not the event_id of its payload. The scorer keys every assessment by
    its event_id, so every copy of an id reaches one writer, in order, which is what first-copy-wins rests on;
    a record keyed otherwise was not written by a scorer (anyone can produce to the topic on Tansu), and its
    copy of an id would be checked out of order with the others."""

    reason = "invalid_value"

    @classmethod
    def of(cls, key: bytes | None, event_id: str) -> MisKeyed:
        shown = "none" if key is None else repr(key[:80].decode("utf-8", "replace"))
        return cls(f"assessment keyed {shown}, but its payload's event_id is {event_id[:80]!r}: not stored; "
                   "the scorer keys each assessment by its event_id", field="key")


class StoreRejected(DeadLetter):
    """The store refused this row (the message carries ClickHouse's error)."""

    reason = "store_rejected"

    @classmethod
    def of(cls, exc: SinkError) -> StoreRejected:
        return cls(f"store refused the row: {exc.message}", code=exc.fields.get("code"))


def insert_isolating(insert: Callable[[Sequence[T], str], None], rows: Sequence[T], token: str,
                     refused: list[tuple[T, SinkError]]) -> None:
    """``insert(rows, token)``; if the store refuses the data (a :class:`SinkError` with ``data``), bisect
    until the refused rows stand alone, and add each with the store's error to ``refused``. A failure of
    the store itself (any other error) propagates, and the caller retries the whole batch: the halves
    already stored carry deterministic tokens (``token/a``, ``token/a/b``...), so the retry does not repeat
    them. Shared by the writer and the cross-run findings store (``correlations.py``)."""
    try:
        insert(rows, token)
    except SinkError as exc:
        if not exc.fields.get("data"):
            raise
        if len(rows) == 1:
            refused.append((rows[0], exc))
            return
        log.warning("store refused a batch's data; isolating the rows",
                    extra={"kv": {"rows": len(rows), "code": exc.fields.get("code")}})
        mid = len(rows) // 2
        insert_isolating(insert, rows[:mid], token + "/a", refused)
        insert_isolating(insert, rows[mid:], token + "/b", refused)


def deliver_dead_letters(dlq: Producer, topic: str, limits: Limits, metrics: Metrics, role: str,
                         rejected: Rejected) -> None:
    """Send the dead letters and wait for the broker to confirm each; SinkError if any is not confirmed
    (the caller then retries the batch and commits nothing). Counts and logs each confirmed one."""
    if not rejected:
        return
    failed: list[str] = []

    def confirm(err: Any, _msg: Message) -> None:
        if err is not None:
            failed.append(str(err))

    for msg, exc in rejected:
        value, key, headers = dead_letter(msg, exc, exc.reason, limits)
        try:
            dlq.produce(topic, value, key=key, headers=headers, on_delivery=confirm)
        except KafkaException:  # even the cut payload is refused: the headers alone still say what happened
            value, key, headers = dead_letter(msg, exc, exc.reason, limits, payload=False)
            dlq.produce(topic, value, key=key, headers=headers, on_delivery=confirm)
    remaining = dlq.flush(30)
    if remaining or failed:
        raise SinkError(f"dead letters not confirmed: {remaining} pending, {len(failed)} failed "
                        f"({failed[0] if failed else 'timeout'})", table="dlq", kind="DeadLetterUndelivered")
    for msg, exc in rejected:
        metrics.dead_letters.labels(reason=exc.reason).inc()
        if isinstance(exc, StoreRejected):
            metrics.poison.labels(role=role, reason="store_rejected").inc()
            log.error("row refused by the store; dead-lettered",
                      extra={"kv": {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                                    "error": exc.message[:300]}})


class Tasks:
    """Work the writer loop runs every so often with the store's client: each task every ``interval``
    seconds, and, while it fails (returns False), with a wait that doubles from twice its interval up to
    ``backoff_max`` (never less than the interval). A store that is down is then asked a few times a minute
    rather than five times a second by each task, with one log line per attempt; the first success restores
    the interval."""

    def __init__(self, backoff_max: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff_max, self.clock = backoff_max, clock
        self._tasks: list[list[Any]] = []  # [interval, next_due, fn, wait after a failure (0: not failing)]

    def add(self, interval: float, fn: Callable[[], bool | None]) -> None:
        self._tasks.append([interval, self.clock() + interval, fn, 0.0])

    def run(self) -> None:
        for task in self._tasks:
            if self.clock() < task[1]:
                continue
            interval, _, fn, wait = task
            try:
                ok = fn()
            except Exception as exc:  # a task's fault must not end the writer's loop
                # Each task handles its records one by one (a record that cannot be stored is dead-lettered);
                # this is the last line: a task that raised anyway is retried with backoff, and the writer
                # goes on storing transitions. Escaping here, one poisoned record crash-looped the writer.
                log.error("writer task failed; will retry", exc_info=True,
                          extra={"kv": {"task": getattr(fn, "__qualname__", type(fn).__name__),
                                        "error": f"{type(exc).__name__}: {str(exc)[:300]}"}})
                ok = False
            if ok is False:
                task[3] = max(interval, min(max(wait * 2, interval * 2), self.backoff_max))
            else:
                task[3] = 0.0
            task[1] = self.clock() + (task[3] or interval)


class Writer:
    role = "writer"

    def __init__(self, settings: Settings, metrics: Metrics, sink: ClickHouseSink, *, registry: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.sink = sink
        self.schemas = SchemaSet.load()
        self.registry = registry if registry is not None else make_registry(settings)
        self._builders: dict[bytes, tuple[int, ContainerBuilder, Any]] = {}
        self._assessment_name = full_name(self.schemas.latest(ASSESSMENT).raw)
        self.consumer, self.membership, self.liveness = self._member()
        self.limits = Limits.from_settings(settings)
        self.dlq = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all",
                                                     "message.max.bytes": settings.max_message_bytes}))
        self.metrics.poison.labels(role=self.role, reason="store_rejected")  # exists at 0 from start-up
        self.rejected = 0
        self._duplicates = 0
        self.stored = 0
        self.backoff_max = 10.0
        self.tasks = Tasks(self.backoff_max)  # work that needs the store's client
        self.add_task(2.0, lambda: record_lag(self.consumer, self.metrics, self.role))
        self.add_task(2.0, self._check_liveness)
        self.pending: list[Message] = []  # consumed, not yet stored

    def _member(self) -> tuple[Consumer, Membership, StallWatch]:
        consumer = Consumer(self.settings.consumer_config(self.settings.writer_group, **{
            "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 8388608}))
        return consumer, Membership(consumer, self.role), StallWatch(consumer, self.role, self.settings.stall_seconds)

    def _subscribe(self) -> None:
        self.membership.subscribe([self.settings.topic_assessments], on_revoke=self._on_revoke,
                                  on_lost=self._on_lost)

    def _check_liveness(self) -> None:
        """The scorers' liveness check (``liveness.py``), answered in place: the writer is a thread of ``agentgov
        run``, and it commits nothing it has not stored, so it leaves the group and joins again as a fresh
        member. What it consumed and did not store yet is handed out again; the store keeps each event once."""
        try:
            self.liveness.check()
        except ConsumerStalled:
            self.metrics.restarts.labels(role=self.role, reason="stalled").inc()
            self.rejoin()
            self._subscribe()

    def rejoin(self) -> None:
        """Leave the group (if still in it) and make a fresh member, not subscribed yet (``run`` subscribes).
        What was consumed and not stored is dropped: it was not committed, so the group hands it out again."""
        self.pending = []
        try:
            self.membership.leave()
        except Exception as exc:  # KafkaException, or a consumer already closed: a new one is made regardless
            log.warning("writer could not leave its group cleanly", extra={"kv": {"error": str(exc)}})
        self.consumer, self.membership, self.liveness = self._member()
        log.warning("writer rejoins its group as a fresh member", extra={"kv": {"role": self.role}})

    def add_task(self, interval: float, fn: Callable[[], bool | None]) -> None:
        """Run ``fn`` every ``interval`` seconds from the writer loop (the thread that owns the client); a
        run that returns False failed, and the next waits longer (:class:`Tasks`)."""
        self.tasks.add(interval, fn)

    # -- framing ------------------------------------------------------------------------------
    def _builder(self, value: bytes) -> tuple[int, ContainerBuilder, Any]:
        """Header length, container builder and head schema (:func:`~pipeline.assessment.head_schema`, None
        if it has none) for this message's writer schema (the wire header split is the serde's:
        :func:`~pipeline.serde.split_header`). The container's schema is the writer schema plus a trailing
        ``source_digest``, which the writer appends to each datum (Avro records are their fields in order)."""
        header, schema_id = split_header(value)
        hit = self._builders.get(header)
        if hit:
            return hit
        if schema_id is None:
            sv = self.schemas.by_fingerprint.get(header[2:])
            if sv is None or sv.record != ASSESSMENT:
                raise DecodeError(f"unknown assessment fingerprint {header[2:].hex()}", reason="unknown_schema")
            schema = sv.raw
        else:
            if self.registry is None:
                raise DecodeError("registry-framed assessment but no registry configured", reason="unknown_schema")
            schema = registry_schema(self.registry, schema_id, self._assessment_name)
        first = schema["fields"][0] if schema.get("fields") else {}
        if first.get("name") != "event_id" or _type(first.get("type")) != "string":
            # Every assessment schema starts with its event_id, which first-copy-wins reads from the datum.
            raise DecodeError(f"assessment schema {schema_id or header[2:].hex()} does not start with event_id",
                              reason="unknown_schema")
        try:
            head = head_schema(schema)
        except (ValueError, KeyError, TypeError):  # not ending with the transition: no digest to compute
            head = None
        stored = dict(schema, fields=[*schema["fields"], DIGEST_FIELD])
        hit = self._builders[header] = (len(header), ContainerBuilder(stored), head)
        return hit

    # -- loop ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event, on_stored: Callable[[int], None] | None = None) -> None:
        self._subscribe()
        self.metrics.up.labels(role=self.role).set(1)
        started = time.monotonic()
        try:
            while not stop.is_set():
                room = self.settings.writer_batch_rows - len(self.pending)
                msgs = self.consumer.consume(min(room, 10000), 0.1)
                self.liveness.delivered(msgs)
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
                self.tasks.run()  # each task is time-gated; lag must be fresh under load too
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
        while True:
            try:
                # inside the retry: a registry that does not answer is waited out like a failing store
                groups, spans, undecodable = self._group(by_part)
                rejected = self._insert(groups, spans)
                # Confirmed before the commit: a dead letter the broker did not take fails the attempt.
                self._dead_letter([*undecodable, *rejected])
                break
            except SinkError as exc:
                attempt += 1
                if isinstance(exc, RegistryUnavailable):
                    self.metrics.registry_errors.labels(role=self.role).inc()
                else:
                    # Closed set: the event-id lookup (first copy wins) or the batch insert behind the ingest views.
                    table = "event_ids" if exc.fields.get("table") == "event_ids" else "ingest"
                    self.metrics.sink_errors.labels(table=table, kind=exc.fields.get("kind", "unknown")).inc()
                what = "schema registry unreachable" if isinstance(exc, RegistryUnavailable) else "store write failed"
                log.error(f"{what}; will retry", extra={"kv": {"attempt": attempt, "error": exc.message}})
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
        if self._duplicates:
            self.metrics.duplicates.inc(self._duplicates)
            log.warning("later copies of stored event_ids kept apart (AG-EVD-005)",
                        extra={"kv": {"copies": self._duplicates}})
        now = time.time()
        self.metrics.last_stored.set(now)
        for msg in msgs:
            for key, value in msg.headers() or ():
                if key == "occurred_at":
                    # The scorer's header, but anyone can write the assessments topic on Tansu: one that is not
                    # a number (stored and committed already) leaves only its latency unmeasured.
                    with contextlib.suppress(TypeError, ValueError, OverflowError):
                        self.metrics.event_to_stored.observe(max(0.0, now - int(value) / 1000))
                    break
        self.stored += len(msgs)
        return True

    def _group(self, by_part: dict[int, list[Message]]) -> tuple[Groups, str, Rejected]:
        """Raw datums grouped by writer schema, and the batch's offset spans (for the dedup token).

        The event_id is read from the datum (its first field), never taken from the Kafka key; a record
        whose key is not that event_id is dead-lettered (:class:`MisKeyed`), so it can neither replace nor
        pre-empt a stored event. The scorer's digest header is taken as given here (the first copy's fast
        path) and checked against the datum in :meth:`_insert` when the id is not new."""
        # One insert per writer schema for the whole batch, not one per partition: every insert has a
        # fixed cost (a part in each table behind the materialized views) that dominates small batches.
        groups: Groups = {}
        spans = []
        undecodable: Rejected = []
        for partition, msgs in by_part.items():
            spans.append(f"{partition}:{msgs[0].offset()}-{msgs[-1].offset()}")
            for msg in msgs:
                value = msg.value() or b""
                try:
                    hlen, builder, head = self._builder(value)
                except DecodeError as exc:
                    undecodable.append((msg, exc))
                    continue
                datum = value[hlen:]
                raw_id = _leading_string(datum)
                if raw_id is None:
                    undecodable.append((msg, DecodeError("assessment datum does not start with a readable event_id",
                                                         reason="truncated")))
                    continue
                event_id = raw_id.decode("utf-8", "replace")
                if msg.key() != raw_id:
                    log.warning("assessment keyed other than its event_id; dead-lettered", extra={"kv": {
                        "partition": msg.partition(), "offset": msg.offset(), "event_id": event_id[:80]}})
                    undecodable.append((msg, MisKeyed.of(msg.key(), event_id)))
                    continue
                digest = _header(msg, DIGEST_HEADER)
                verified = digest is None or len(digest) != 32
                if verified:  # an older scorer's message: read past the head (slow)
                    digest = _digest(datum, head)
                group = groups.get(value[:hlen])
                if group is None:
                    group = groups[value[:hlen]] = Group(builder, head)
                group.datums.append(datum)
                group.msgs.append(msg)
                group.ids.append(event_id)
                group.digests.append(digest or b"")
                group.verified.append(verified)
        return groups, ",".join(spans), undecodable

    def _insert(self, groups: Groups, batch: str) -> Rejected:
        """Insert every group; returns the rows the store refused (isolated by bisection).

        First copy wins: a row whose event_id is already stored (or claimed earlier in this batch) from
        another source record goes to ``ingest_duplicates``, never over the original (migration 004); so
        does one from the same source record with other content (another digest, migration 008), which
        after a Tansu restart (offsets from 0 again) is another event, not a redelivery. The event_id is
        the payload's (:meth:`_group`), and the digest of a copy of a known id is computed from its datum:
        a forged copy that repeats the original's source and digest headers over other content is a later
        copy too. A row stored before 008 has no digest and is matched by its source alone. The split
        depends only on what is stored, so a retried attempt splits the same way and reuses the same dedup
        tokens."""
        rejected: Rejected = []
        stored = self.sink.stored_sources(list({i for group in groups.values() for i in group.ids}))
        claimed: dict[str, tuple[Group, int]] = {}
        self._duplicates = 0
        sides: list[tuple[Group, list[int], list[int]]] = []
        for group in groups.values():
            first: list[int] = []
            later: list[int] = []
            for i, (msg, event_id) in enumerate(zip(group.msgs, group.ids, strict=True)):
                known = stored.get(event_id)
                # The sources are read, and the digest computed from the datum, only for an id seen before:
                # both cost per row, and neither header can be trusted to say a copy is the stored event's.
                if known is not None:
                    source = _source(msg)
                    duplicate = source is None or not (
                        (*source, group.digest(i).decode("ascii", "replace")) in known or (*source, "") in known)
                elif event_id in claimed:
                    claimant, j = claimed[event_id]
                    source = _source(msg)
                    duplicate = source is None or (source, group.digest(i)) != (
                        _source(claimant.msgs[j]), claimant.digest(j))
                else:
                    claimed[event_id], duplicate = (group, i), False
                (later if duplicate else first).append(i)
            sides.append((group, first, later))
        # The rows are made once every digest is settled: a first copy's digest is computed if a later copy
        # of its id in the batch asked for it.
        for header, (group, first, later) in zip(groups, sides, strict=True):
            rows = [group.row(i) for i in range(len(group.msgs))]
            # Same messages -> same token, so a retried insert is dropped by ClickHouse's dedup window; other
            # messages at the same offsets (after a Tansu restart) -> another token (content_digest).
            token = f"{self.settings.topic_assessments}-{batch}-{header.hex()}-{content_digest(rows)}"
            if first:
                self._insert_isolating(group.builder, [rows[i] for i in first], [group.msgs[i] for i in first],
                                       token, rejected)
            if later:
                self._insert_isolating(group.builder, [rows[i] for i in later], [group.msgs[i] for i in later],
                                       token + "-dup", rejected, table="ingest_duplicates")
                self._duplicates += len(later)
        return rejected

    def _insert_isolating(self, builder: ContainerBuilder, datums: list[bytes], msgs: list[Message], token: str,
                          rejected: Rejected, table: str = "ingest") -> None:
        """Insert; rows the store refuses as data are isolated by bisection (:func:`insert_isolating`)."""

        def insert(rows: Sequence[int], tok: str) -> None:
            t0 = time.perf_counter()
            self.sink.insert_assessments(builder.build(datums[rows[0]:rows[-1] + 1]), tok, table=table)
            self.metrics.sink_insert_duration.labels(table=table).observe(time.perf_counter() - t0)
            self.metrics.sink_rows.labels(table=table).inc(len(rows))

        refused: list[tuple[int, SinkError]] = []
        insert_isolating(insert, range(len(datums)), token, refused)
        rejected.extend((msgs[i], StoreRejected.of(exc)) for i, exc in refused)

    def _dead_letter(self, rejected: Rejected) -> None:
        """Send the dead letters, confirmed (:func:`deliver_dead_letters`); SinkError if any is not."""
        deliver_dead_letters(self.dlq, self.settings.topic_dlq, self.limits, self.metrics, self.role, rejected)
        self.rejected += sum(isinstance(exc, StoreRejected) for _, exc in rejected)

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
        self.membership.leave()
        self.dlq.flush(10)


_HEX32 = b"\x40"  # the Avro length (zigzag varint) of a 32-byte string: a digest in hex


def _header(msg: Message, name: str) -> bytes | None:
    for key, value in msg.headers() or ():
        if key == name:
            return bytes(value)
    return None


def _type(avro_type: Any) -> Any:
    """A field's Avro type name (``"string"`` for both ``"string"`` and ``{"type": "string", ...}``)."""
    return avro_type.get("type") if isinstance(avro_type, dict) else avro_type


def _leading_string(datum: bytes) -> bytes | None:
    """The Avro string a datum starts with (an assessment's event_id), or None if it cannot be read: a zigzag
    varint length (at most 10 bytes), then that many bytes. A slice, no decoding: the writer's hot path."""
    n = shift = 0
    for i, b in enumerate(datum[:10]):
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            length = (n >> 1) ^ -(n & 1)
            end = i + 1 + length
            return datum[i + 1:end] if length >= 0 and end <= len(datum) else None
        shift += 7
    return None


def _source(msg: Message) -> tuple[int, int] | None:
    """The transitions record an assessment was scored from (headers set by the scorer), if known."""
    partition = offset = None
    for key, value in msg.headers() or ():
        if key == "agentgov.source.partition":
            partition = value
        elif key == "agentgov.source.offset":
            offset = value
    if partition is None or offset is None:
        return None
    try:
        return int(partition), int(offset)
    except ValueError:
        return None


def _digest(datum: bytes, head: Any) -> bytes:
    """The digest the scorer would have sent; b"" if the datum cannot be read (the store refuses it anyway)."""
    if head is None:
        return b""
    try:
        return digest_of_assessment(datum, head).encode()
    except Exception:  # fastavro's errors on a truncated or malformed datum are of several types
        return b""
