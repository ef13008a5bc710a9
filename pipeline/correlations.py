"""Storing the correlator's findings: ``agentgov.correlations.v1`` -> ClickHouse ``cross_run_findings``.

Run by the store owner (the writer process) as a writer task, so it uses the writer's ClickHouse client
from the writer's thread (chdb is single-process). At least once: offsets are committed only after the
insert returned; the table is keyed on the deterministic ``finding_id`` and inserts carry a dedup
token, so a redelivered or re-evaluated finding is stored once (read with FINAL).

Example::

    store = attach(writer, settings, sink)      # writer.add_task(...) under the hood
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from .errors import DeadLetter, RegistryUnavailable
from .facts import FINDING
from .membership import Membership
from .metrics import Metrics
from .schemas import SchemaSet
from .serde import Serde, make_registry
from .settings import Settings
from .sinks.clickhouse import ClickHouseSink

if TYPE_CHECKING:
    from .writer import Writer

log = logging.getLogger(__name__)

COLUMNS = ("finding_id", "code", "severity", "category", "pattern", "message", "entity_key", "event_id", "run_id",
           "agent_id", "occurred_at", "related_event_ids", "related_run_ids", "related_partitions", "refs",
           "detected_at", "correlator_version", "governance_policy_version")
TABLE = "cross_run_findings"


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class CorrelationStore:
    """Consumes cross-run findings and inserts them; ``poll_once`` is one bounded, non-blocking step."""

    def __init__(self, settings: Settings, metrics: Metrics, sink: ClickHouseSink, *, registry: Any = None) -> None:
        self.settings, self.metrics, self.sink = settings, metrics, sink
        registry = registry if registry is not None else make_registry(settings)
        self.serde = Serde(SchemaSet.load(), registry, record=FINDING,
                           subject=f"{settings.topic_correlations}-value")
        self.consumer = Consumer(settings.consumer_config(f"{settings.writer_group}-correlations"))
        self.membership = Membership(self.consumer, "writer")
        self.membership.subscribe([settings.topic_correlations])
        self.pending: list[Message] = []
        self.stored = 0

    def __call__(self) -> None:
        self.poll_once()

    def poll_once(self, max_messages: int = 1000) -> int:
        """Store one batch (or retry the one a failed insert left); returns findings stored now."""
        if not self.pending:
            self.pending = [m for m in self.consumer.consume(max_messages, 0.05) if self._keep(m)]
        if not self.pending:
            return 0
        rows = []
        for msg in self.pending:
            try:
                r = self.serde.decode(msg.value()).record
            except RegistryUnavailable as exc:  # kept pending: retried on the next tick, never skipped
                log.error("schema registry unreachable; cross-run findings will be retried",
                          extra={"kv": {"error": exc.message}})
                self.metrics.registry_errors.labels(role="writer").inc()
                return 0
            except DeadLetter as exc:
                log.error("undecodable cross-run finding skipped", extra={"kv": {
                    "error": str(exc), "partition": msg.partition(), "offset": msg.offset()}})
                self.metrics.sink_errors.labels(table=TABLE, kind="DecodeError").inc()
                continue
            r["occurred_at"], r["detected_at"] = _ts(r["occurred_at"]), _ts(r["detected_at"])
            rows.append([r[c] for c in COLUMNS])
        spans = ",".join(f"{m.partition()}:{m.offset()}" for m in (self.pending[0], self.pending[-1]))
        try:
            if rows:
                self.sink.client.insert(f"{self.sink.database}.{TABLE}", rows, column_names=list(COLUMNS),
                                        settings={"insert_deduplication_token": f"{TABLE}-{spans}-{len(rows)}",
                                                  "insert_deduplicate": 1})
        except Exception as exc:  # retried on the next tick with the same messages
            self.metrics.sink_errors.labels(table=TABLE, kind=type(exc).__name__).inc()
            log.error("cross-run findings insert failed; will retry", extra={"kv": {"error": str(exc)[:300]}})
            return 0
        self.metrics.sink_rows.labels(table=TABLE).inc(len(rows))
        last: dict[int, int] = {}
        for msg in self.pending:
            last[msg.partition()] = msg.offset() + 1
        try:
            self.consumer.commit(offsets=[TopicPartition(self.settings.topic_correlations, p, o)
                                          for p, o in last.items()], asynchronous=False)
        except KafkaException as exc:  # stored; a redelivery is absorbed by finding_id
            log.warning("commit failed after store", extra={"kv": {"error": str(exc)}})
        self.pending = []
        self.stored += len(rows)
        return len(rows)

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
    store = CorrelationStore(settings, writer.metrics, sink, registry=writer.registry)
    writer.add_task(interval, store)
    return store
