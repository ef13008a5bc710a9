"""Storing the correlator's findings: ``agentgov.correlations.v1`` -> ClickHouse ``cross_run_findings``.

Run by the store owner (the writer process) as a writer task, so it uses the writer's ClickHouse client
from the writer's thread (chdb is single-process). At least once: offsets are committed only after the
insert returned; the table is keyed on the deterministic ``finding_id`` and inserts carry a dedup
token (offsets and a digest of the values), so a redelivered or re-evaluated finding is stored once (read
with FINAL).

First stored copy wins, as for events: ``cross_run_findings`` is a ReplacingMergeTree on ``finding_id`` with no
version, so any later insert of an id replaced the stored finding (in ``findings`` too, 006), and anyone who can
write the topic (on Tansu: anyone on loopback) could turn a critical finding into an "info" one. Before each
insert the store looks the batch's finding ids up (every stored version) and, within the batch, keeps the
first of each id. A later copy whose content (``CONTENT``: what the SOC reads of a finding; not the detection
time, the versions nor the partition numbers, which a correlator rebuilt after an upgrade or a repartition
gives anew) equals a stored one is a redelivery, dropped; one with other content is dead-lettered (reason
``invalid_value``, field ``finding_id``, naming the fields that differ), never stored.

Migration 006 copies every finding into ``findings``, partitioned by day, and ClickHouse refuses an insert
that touches more than 100 partitions (error 252), so a batch is inserted in runs of at most
``MAX_DAYS_PER_INSERT`` days of ``occurred_at``. A finding the store still refuses as data is treated as
the writer treats an assessment (``writer.insert_isolating``): isolated by bisection, dead-lettered with
reason ``store_rejected``, confirmed, then committed, so one finding cannot stop the rest.

Example::

    store = attach(writer, settings, sink)      # writer.add_task(...) under the hood
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from .errors import DeadLetter, RegistryUnavailable, SinkError, ValidationError
from .facts import FINDING
from .limits import Limits, check_store_time
from .membership import Membership
from .metrics import Metrics
from .schemas import SchemaSet
from .serde import Serde, make_registry
from .settings import Settings
from .sinks.clickhouse import ClickHouseSink, content_digest
from .writer import Rejected, StoreRejected, deliver_dead_letters, insert_isolating

if TYPE_CHECKING:
    from .writer import Writer

log = logging.getLogger(__name__)

COLUMNS = ("finding_id", "code", "severity", "category", "pattern", "message", "entity_key", "event_id", "run_id",
           "agent_id", "occurred_at", "related_event_ids", "related_run_ids", "related_partitions", "refs",
           "detected_at", "correlator_version", "governance_policy_version")
TABLE = "cross_run_findings"
CONTENT = ("code", "severity", "category", "pattern", "message", "entity_key", "event_id", "run_id", "agent_id",
           "occurred_at", "related_event_ids", "related_run_ids", "refs")
"""The fields that make two copies of a finding_id the same finding (:func:`content`)."""
_CONTENT_SQL = [("toUnixTimestamp64Milli(occurred_at)" if c == "occurred_at" else c) for c in CONTENT]
DAY_MS = 86_400_000
MAX_DAYS_PER_INSERT = 100
"""ClickHouse's default ``max_partitions_per_insert_block``: ``findings`` (006) has a partition per day."""


def _ts(ms: int, field: str) -> datetime:
    """A finding's time as the store takes it; :class:`ValidationError` if the store cannot hold it."""
    return datetime.fromtimestamp(check_store_time(ms, field) / 1000, tz=UTC)


def to_row(r: dict[str, Any]) -> tuple[int, list[Any]]:
    """(UTC day of ``occurred_at``, the stored row) of one decoded finding; :class:`ValidationError` for a
    finding that cannot be a row (its times out of the store's range), so it is dead-lettered, not retried."""
    day = r["occurred_at"] // DAY_MS
    r = dict(r, occurred_at=_ts(r["occurred_at"], "occurred_at"), detected_at=_ts(r["detected_at"], "detected_at"))
    return day, [r[c] for c in COLUMNS]


def content(r: dict[str, Any]) -> tuple[Any, ...]:
    """A decoded finding's :data:`CONTENT`, comparable with a stored row's (times in ms, arrays as tuples)."""
    return tuple(tuple(r[c]) if isinstance(r[c], list) else r[c] for c in CONTENT)


class FindingConflict(ValidationError):
    """Another copy of a stored (or earlier in the batch) finding_id with other content: the first stands."""

    reason = "invalid_value"

    @classmethod
    def of(cls, finding_id: str, first: tuple[Any, ...], copy: tuple[Any, ...]) -> FindingConflict:
        differ = [f"{c} {str(a)[:60]!r} -> {str(b)[:60]!r}" for c, a, b in zip(CONTENT, first, copy, strict=True)
                  if a != b]
        return cls(f"cross-run finding {finding_id[:80]} differs from its first copy ({'; '.join(differ)}): "
                   "the first copy stands, this one is not stored", field="finding_id")


def day_runs(days: Sequence[int], max_days: int = MAX_DAYS_PER_INSERT) -> list[list[int]]:
    """Indexes of ``days`` (UTC day numbers), sorted by day and cut into runs of at most ``max_days``
    distinct days. Depends only on ``days``, so a retried batch is cut the same way (same tokens)."""
    runs: list[list[int]] = []
    seen = 0
    last = None
    for i in sorted(range(len(days)), key=lambda i: days[i]):
        if days[i] != last:
            if not runs or seen == max_days:
                runs.append([])
                seen = 0
            seen += 1
            last = days[i]
        runs[-1].append(i)
    return runs


class CorrelationStore:
    """Consumes cross-run findings and inserts them; ``poll_once`` is one bounded, non-blocking step."""

    def __init__(self, settings: Settings, metrics: Metrics, sink: ClickHouseSink, *, registry: Any = None,
                 dead_letter: Callable[[Rejected], None] | None = None) -> None:
        self.settings, self.metrics, self.sink = settings, metrics, sink
        registry = registry if registry is not None else make_registry(settings)
        self.serde = Serde(SchemaSet.load(), registry, record=FINDING,
                           subject=f"{settings.topic_correlations}-value")
        self.consumer = Consumer(settings.consumer_config(f"{settings.writer_group}-correlations"))
        self.membership = Membership(self.consumer, "writer")
        self.membership.subscribe([settings.topic_correlations])
        self.pending: list[Message] = []
        self.stored = 0
        self.rejected = 0
        self._dlq: Producer | None = None
        self.dead_letter = dead_letter or self._own_dead_letter
        self.failing = False  # the last attempt failed (store or registry): the writer backs off

    def __call__(self) -> bool:
        """One scheduled run (:meth:`pipeline.writer.Writer.add_task`); False if the store or the registry
        failed it, so the writer waits longer before the next."""
        self.poll_once()
        return not self.failing

    def poll_once(self, max_messages: int = 1000) -> int:
        """Store one batch (or retry the one a failed insert left); returns findings stored now."""
        self.failing = False
        if not self.pending:
            self.pending = [m for m in self.consumer.consume(max_messages, 0.05) if self._keep(m)]
        if not self.pending:
            return 0
        rows: list[list[Any]] = []
        msgs: list[Message] = []
        days: list[int] = []
        contents: list[tuple[Any, ...]] = []
        rejected: Rejected = []
        for msg in self.pending:
            try:
                record = self.serde.decode(msg.value()).record
                day, row = to_row(record)
            except RegistryUnavailable as exc:  # kept pending: retried on the next tick, never skipped
                log.error("schema registry unreachable; cross-run findings will be retried",
                          extra={"kv": {"error": exc.message}})
                self.metrics.registry_errors.labels(role="writer").inc()
                self.failing = True
                return 0
            except DeadLetter as exc:  # dead-lettered with its reason (below, confirmed before the commit)
                log.error("cross-run finding dead-lettered", extra={"kv": {
                    "error": str(exc), "reason": exc.reason, "partition": msg.partition(), "offset": msg.offset()}})
                self.metrics.sink_errors.labels(table=TABLE, kind=type(exc).__name__).inc()
                rejected.append((msg, exc))
                continue
            days.append(day)
            rows.append(row)
            msgs.append(msg)
            contents.append(content(record))
        spans = ",".join(f"{m.partition()}:{m.offset()}" for m in (self.pending[0], self.pending[-1]))
        try:
            keep = self._first_copies(rows, msgs, contents, rejected)
            rows, msgs, days = [rows[i] for i in keep], [msgs[i] for i in keep], [days[i] for i in keep]
            token = f"{TABLE}-{spans}-{len(rows)}-{content_digest(m.value() or b'' for m in self.pending)}"
            held_back = len(rejected)
            runs = day_runs(days)
            for n, run in enumerate(runs):
                refused: list[tuple[int, SinkError]] = []
                insert_isolating(self._insert(rows), run, token if len(runs) == 1 else f"{token}/d{n}", refused)
                rejected.extend((msgs[i], StoreRejected.of(exc)) for i, exc in refused)
            # Confirmed before the commit: a dead letter the broker did not take fails the attempt.
            self.dead_letter(rejected)
        except SinkError as exc:  # the store's own failure: retried on the next tick with the same messages
            self.metrics.sink_errors.labels(table=TABLE, kind=exc.fields.get("kind", "unknown")).inc()
            log.error("cross-run findings insert failed; will retry", extra={"kv": {"error": exc.message[:300]}})
            self.failing = True
            return 0
        stored = len(rows) - (len(rejected) - held_back)
        self.metrics.sink_rows.labels(table=TABLE).inc(stored)
        last: dict[int, int] = {}
        for msg in self.pending:
            last[msg.partition()] = msg.offset() + 1
        try:
            self.consumer.commit(offsets=[TopicPartition(self.settings.topic_correlations, p, o)
                                          for p, o in last.items()], asynchronous=False)
        except KafkaException as exc:  # stored; a redelivery is absorbed by finding_id
            log.warning("commit failed after store", extra={"kv": {"error": str(exc)}})
        self.pending = []
        self.stored += stored
        self.rejected += len(rejected)
        return stored

    def _first_copies(self, rows: list[list[Any]], msgs: list[Message], contents: list[tuple[Any, ...]],
                      rejected: Rejected) -> list[int]:
        """Indexes of the rows to insert: each finding_id's first copy (neither stored nor earlier in the batch).
        A later copy with the content of a stored one (or of the batch's first) is a redelivery, left out; one
        with other content is added to ``rejected`` (:class:`FindingConflict`). The lookup is of what is
        stored, so a retried attempt leaves out what an earlier attempt stored. Raises :class:`SinkError`."""
        stored: dict[str, list[tuple[Any, ...]]] = {}
        for fid, *values in self.sink.stored_findings(list({row[0] for row in rows}), _CONTENT_SQL):
            stored.setdefault(fid, []).append(tuple(tuple(v) if isinstance(v, list) else v for v in values))
        keep: list[int] = []
        for i, row in enumerate(rows):
            fid = row[0]
            known = stored.get(fid)
            if known is None:
                stored[fid] = [contents[i]]
                keep.append(i)
            elif contents[i] not in known:
                exc = FindingConflict.of(fid, known[0], contents[i])
                log.warning("cross-run finding differs from the stored copy of its id; dead-lettered", extra={"kv": {
                    "finding_id": fid[:80], "partition": msgs[i].partition(), "offset": msgs[i].offset(),
                    "error": str(exc)[:300]}})
                rejected.append((msgs[i], exc))
        return keep

    def _insert(self, rows: list[list[Any]]) -> Callable[[Sequence[int], str], None]:
        """The insert of some of ``rows`` (by index) under a token, for :func:`insert_isolating`."""
        def insert(which: Sequence[int], token: str) -> None:
            self.sink.insert_rows(TABLE, [rows[i] for i in which], list(COLUMNS), token)
        return insert

    def _own_dead_letter(self, rejected: Rejected) -> None:
        """Without a writer to share (a store run on its own): a dead-letter producer of its own, made when
        first needed."""
        if not rejected:
            return
        if self._dlq is None:
            self._dlq = Producer(self.settings.kafka_config(**{
                "enable.idempotence": True, "acks": "all", "message.max.bytes": self.settings.max_message_bytes}))
        deliver_dead_letters(self._dlq, self.settings.topic_dlq, Limits.from_settings(self.settings), self.metrics,
                             "writer", rejected)

    @staticmethod
    def _keep(msg: Message) -> bool:
        err = msg.error()
        if err is None:
            return True
        if err.code() != KafkaError._PARTITION_EOF:
            log.warning("consume error", extra={"kv": {"error": str(err)}})
        return False

    def close(self) -> None:
        self.membership.leave()


def attach(writer: Writer, settings: Settings, sink: ClickHouseSink, interval: float = 0.2) -> CorrelationStore:
    """Store cross-run findings from the writer's loop (the thread that owns the store's client)."""
    def dead_letter(rejected: Rejected) -> None:  # through the writer's producer (idempotent, acks=all)
        deliver_dead_letters(writer.dlq, settings.topic_dlq, writer.limits, writer.metrics, writer.role, rejected)

    store = CorrelationStore(settings, writer.metrics, sink, registry=writer.registry, dead_letter=dead_letter)
    writer.add_task(interval, store)
    return store
