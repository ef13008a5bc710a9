"""The writer's second duty: append review decisions and exception versions to the audit store.

People's decisions travel like everything else in agentgov: the review app publishes ``ReviewDecision``
records to ``agentgov.decisions.v1`` and ``RiskException`` versions to ``agentgov.exceptions.v1``; the
store owner (the writer loop, which holds the ClickHouse client) reads both and appends them to the
``decisions`` and ``exceptions`` tables (migration 005). Rows are only ever inserted: a change of state
is a new row. Offsets are committed after the insert returned, and each insert carries a dedup token
made of the offsets and a digest of the values (offsets start at 0 again after a Tansu restart), so a
redelivered batch is dropped by ClickHouse (at least once, stored once).

Example::

    log = attach(writer, settings, sink)      # runs every 0.2 s on the writer loop
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from .errors import DeadLetter, RegistryUnavailable, SinkError
from .limits import check_store_time
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

DECISION_COLUMNS = ["decision_id", "kind", "subject_kind", "subject_id", "subject_version", "actor", "actor_roles",
                    "decided_at", "from_state", "to_state", "classification", "reason", "comment", "payload"]
EXCEPTION_COLUMNS = ["exception_id", "version", "state", "code", "agent_id", "workflow_id", "target_id",
                     "entitlement", "justification", "requester", "approver", "requested_at", "effective_at",
                     "expires_at", "ended_at", "updated_by", "updated_at"]
_TIMES = {"decided_at", "requested_at", "effective_at", "expires_at", "ended_at", "updated_at"}


def _ts(ms: int | None, field: str) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(check_store_time(ms, field) / 1000, UTC)


def row(record: dict[str, Any], columns: list[str]) -> list[Any]:
    """The stored row of one record; :class:`ValidationError` (reason ``invalid_value``) for a time the store
    cannot hold, so the record is dead-lettered rather than failing its batch (and the writer) forever."""
    return [_ts(record.get(c), c) if c in _TIMES else record.get(c) for c in columns]


class DecisionLog:
    """Consumes the decisions and exceptions topics and appends them to the store."""

    def __init__(self, settings: Settings, sink: ClickHouseSink, metrics: Metrics | None = None, *,
                 registry: Any = None, dead_letter: Callable[[Rejected], None] | None = None) -> None:
        self.settings, self.sink, self.metrics = settings, sink, metrics
        # Records that do not decode, and rows the store refuses as data, go here (confirmed before the
        # commit); without it they are logged and counted only (a DecisionLog run on its own, in tests).
        self.dead_letter = dead_letter or self._log_only
        schemas = SchemaSet.load()
        registry = registry if registry is not None else make_registry(settings)
        self.tables = {
            settings.topic_decisions: ("decisions", DECISION_COLUMNS,
                                       Serde(schemas, registry, record="review_decision",
                                             subject=f"{settings.topic_decisions}-value")),
            settings.topic_exceptions: ("exceptions", EXCEPTION_COLUMNS,
                                        Serde(schemas, registry, record="risk_exception",
                                              subject=f"{settings.topic_exceptions}-value")),
        }
        self.consumer = Consumer(settings.consumer_config(f"{settings.writer_group}-decisions"))
        self.membership = Membership(self.consumer, "writer")
        self.membership.subscribe(list(self.tables))
        self.pending: list[Message] = []
        self.stored = 0
        self.failing = False  # the last attempt failed (store or registry): the writer backs off

    def poll_once(self, timeout: float = 0.0) -> int:
        """Read what is there, store it, commit. Returns rows stored now (0 while the store fails).

        A failed attempt is retried with the same records (nothing more is read until they are stored), so
        the retry carries the same dedup tokens and what a first attempt stored is not stored twice."""
        self.failing = False
        if not self.pending:
            self.pending = [m for m in self.consumer.consume(1000, timeout) if m.error() is None]
        if not self.pending:
            return 0
        rows: dict[str, list[list[Any]]] = {}
        sources: dict[str, list[Message]] = {}
        rejected: Rejected = []
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for msg in self.pending:
            table, columns, serde = self.tables[msg.topic()]
            key = (msg.topic(), msg.partition())
            first = spans.get(key, (msg.offset(), msg.offset()))[0]
            spans[key] = (first, msg.offset())
            try:
                values = row(serde.decode(msg.value()).record, columns)
            except RegistryUnavailable as exc:  # kept pending: retried on the next poll, never skipped
                log.error("schema registry unreachable; review records will be retried",
                          extra={"kv": {"error": exc.message}})
                if self.metrics is not None:
                    self.metrics.registry_errors.labels(role="writer").inc()
                self.failing = True
                return 0
            except DeadLetter as exc:  # the review app writes here, but on Tansu anyone can: a dead letter
                log.error("review record dead-lettered", extra={"kv": {
                    "topic": msg.topic(), "offset": msg.offset(), "reason": exc.reason, "error": str(exc)}})
                rejected.append((msg, exc))
                continue
            rows.setdefault(table, []).append(values)
            sources.setdefault(table, []).append(msg)
        token = ",".join(f"{t}:{p}:{a}-{b}" for (t, p), (a, b) in sorted(spans.items()))
        token += f"-{content_digest(m.value() or b'' for m in self.pending)}"
        try:
            for table, values in rows.items():
                columns = self.tables[self.settings.topic_decisions if table == "decisions"
                                      else self.settings.topic_exceptions][1]
                refused: list[tuple[int, SinkError]] = []
                insert_isolating(self._insert_some(table, columns, values), range(len(values)),
                                 f"{table}-{token}", refused)
                rejected.extend((sources[table][i], StoreRejected.of(exc)) for i, exc in refused)
            self.dead_letter(rejected)  # confirmed before the commit, or the attempt is retried
        except SinkError as exc:
            log.error("review records not stored; will retry", extra={"kv": {"error": exc.message}})
            self.failing = True
            return 0
        offsets = [TopicPartition(t, p, b + 1) for (t, p), (_, b) in spans.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed after store; records will be redelivered", extra={"kv": {"error": str(exc)}})
        n = sum(len(v) for v in rows.values()) - sum(1 for _, exc in rejected if isinstance(exc, StoreRejected))
        self.pending = []
        self.stored += n
        return n

    def _insert_some(self, table: str, columns: list[str], values: list[list[Any]]
                     ) -> Callable[[Sequence[int], str], None]:
        """The insert of some of ``values`` (by index) under a token, for :func:`insert_isolating`: a
        :class:`SinkError` with ``data`` when the store refuses the rows, not itself."""
        def insert(which: Sequence[int], token: str) -> None:
            try:
                self.sink.insert_rows(table, [values[i] for i in which], columns, token)
            except SinkError as exc:
                if self.metrics is not None:
                    self.metrics.sink_errors.labels(table=table, kind=exc.fields.get("kind", "unknown")).inc()
                raise
            if self.metrics is not None:
                self.metrics.sink_rows.labels(table=table).inc(len(which))
        return insert

    @staticmethod
    def _log_only(rejected: Rejected) -> None:
        for msg, exc in rejected:
            log.error("review record not stored", extra={"kv": {"topic": msg.topic(), "offset": msg.offset(),
                                                                "reason": exc.reason, "error": str(exc)[:300]}})

    def __call__(self) -> bool:
        """One scheduled run (:meth:`pipeline.writer.Writer.add_task`); False if the store or the registry
        failed it, so the writer waits longer before the next."""
        self.poll_once()
        return not self.failing

    def close(self) -> None:
        """Leave the group. An open consumer nobody polls any more keeps librdkafka's main thread busy."""
        self.membership.leave()


def attach(writer: Writer, settings: Settings, sink: ClickHouseSink, interval: float = 0.2) -> DecisionLog:
    """Schedule the decision log on the writer loop (the thread that owns the store's client)."""
    def dead_letter(rejected: Rejected) -> None:  # through the writer's producer (idempotent, acks=all)
        deliver_dead_letters(writer.dlq, settings.topic_dlq, writer.limits, writer.metrics, writer.role, rejected)

    decision_log = DecisionLog(settings, sink, writer.metrics, registry=writer.registry, dead_letter=dead_letter)
    writer.add_task(interval, decision_log)
    return decision_log
