"""Approved risk exceptions, as the scorers see them: followed from a compacted topic, applied by event time.

The review app publishes every version of an exception (``RiskException``) to ``agentgov.exceptions.v1``
(compacted, keyed by exception_id). Every scorer runs an :class:`ExceptionCache` that reads the topic from
its start and keeps following it, as :class:`pipeline.baselines.BaselineCache` does for baselines.

:func:`apply` marks each finding an active exception covers with the exception's id and version. A marked
finding is still stored, but it does not page (the scorer leaves it out of the paging metrics) and stays
out of the review queue. Whether an exception covers an event is decided by the event's ``occurred_at``
against the exception's window ``[effective_at, min(expires_at, ended_at))`` (and its record's log time
against the window's end: :meth:`ActiveWindow.covers`), never by the wall clock, so
a replay of the same events with the same exception versions marks the same findings; and the
exception lapses by itself: the first matching event after ``expires_at`` pages again.

Nobody clears evidence about their own access: an exception never covers an event whose target, principal
(the identity its agent acted for) or approver is the exception's requester or approver, in any spelling
(``identity_key``). The review app refuses to approve an exception whose named target or agent is the
approver; an exception scoped without a target would otherwise have covered the approver's own access.

Example::

    cache = ExceptionCache(settings).start()
    scored = apply(scored, ev, cache.index)
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from .errors import RegistryUnavailable
from .events import TransitionDict, identity_key
from .followers import follow, refused, take_each
from .limits import check_store_time
from .metrics import Metrics
from .schemas import SchemaSet
from .scoring.engine import Scored
from .serde import Serde, make_registry
from .settings import Settings

log = logging.getLogger(__name__)

RECORD = "risk_exception"
TIMES = ("requested_at", "effective_at", "expires_at", "ended_at", "updated_at")


SEND_SKEW_MS = 300_000
"""How long after an exception's end an event stamped inside it may still reach the log and be covered (the
future skew an event may have: ``Limits.max_future_ms``'s default): an agent's send is not instant."""


@dataclass(frozen=True, slots=True)
class ActiveWindow:
    """The part of one exception version a scorer needs: its scope and the event-time window it covers."""

    exception_id: str
    version: int
    code: str
    agent_id: str
    workflow_id: str | None
    target_id: str | None
    entitlement: str | None
    start_ms: int
    end_ms: int
    parties: frozenset[str] = frozenset()
    """Identity keys of the requester and the approver: events about their own access are not covered."""

    def covers(self, ev: TransitionDict, log_ms: int = 0) -> bool:
        """Whether the window covers ``ev``: stamped inside it, in scope, and (when the record's log time
        ``log_ms`` is known) sent before it ended, give or take :data:`SEND_SKEW_MS`. The event time is the
        agent's word: an event stamped back into an exception that had expired or been revoked before it was
        sent is not covered by it."""
        if not self.start_ms <= ev["occurred_at"] < self.end_ms:
            return False
        if log_ms > 0 and log_ms >= self.end_ms + SEND_SKEW_MS:
            return False
        if self.workflow_id is not None and ev["workflow_id"] != self.workflow_id:
            return False
        if self.target_id is not None and ev["target"]["identity_id"] != self.target_id:
            return False
        if self.entitlement is not None and ev["resource"]["entitlement"] != self.entitlement:
            return False
        return not self.parties or not self._about_a_party(ev)

    def _about_a_party(self, ev: TransitionDict) -> bool:
        for who in (ev["target"]["identity_id"], ev["agent"]["on_behalf_of"], ev["decision"]["approved_by"]):
            if who and identity_key(who) in self.parties:
                return True
        return False


def window(record: dict[str, Any]) -> ActiveWindow | None:
    """The window of one exception version; None if it never took effect (requested, rejected)."""
    if record["state"] not in ("active", "revoked") or record.get("effective_at") is None:
        return None
    end = record["expires_at"]
    if record.get("ended_at") is not None:
        end = min(end, record["ended_at"])
    parties = frozenset(identity_key(p) for p in (record.get("requester"), record.get("approver")) if p)
    return ActiveWindow(record["exception_id"], record["version"], record["code"], record["agent_id"],
                        record.get("workflow_id"), record.get("target_id"), record.get("entitlement"),
                        record["effective_at"], end, parties)


class ExceptionIndex:
    """Latest version of every exception, indexed by (code, agent). Replaced whole, read lock-free."""

    def __init__(self, latest: dict[str, dict[str, Any]] | None = None) -> None:
        self.latest: dict[str, dict[str, Any]] = dict(latest or {})
        self.by_scope: dict[tuple[str, str], tuple[ActiveWindow, ...]] = {}
        grouped: dict[tuple[str, str], list[ActiveWindow]] = {}
        for record in self.latest.values():
            w = window(record)
            if w is not None:
                grouped.setdefault((w.code, w.agent_id), []).append(w)
        for key, ws in grouped.items():
            # Deterministic choice when several cover one finding: the oldest id wins.
            self.by_scope[key] = tuple(sorted(ws, key=lambda w: w.exception_id))

    def with_record(self, record: dict[str, Any]) -> ExceptionIndex:
        current = self.latest.get(record["exception_id"])
        if current is not None and current["version"] >= record["version"]:
            return self  # a redelivered or older version changes nothing
        return ExceptionIndex({**self.latest, record["exception_id"]: record})

    def match(self, code: str, ev: TransitionDict, log_ms: int = 0) -> ActiveWindow | None:
        for w in self.by_scope.get((code, ev["agent"]["agent_id"]), ()):
            if w.covers(ev, log_ms):
                return w
        return None

    def __len__(self) -> int:
        return len(self.latest)

    def approved(self) -> int:
        """Exceptions whose latest version is approved (``active``), expired or not."""
        return sum(1 for r in self.latest.values() if r["state"] == "active")


def apply(scored: Scored, ev: TransitionDict, index: ExceptionIndex, log_ms: int = 0) -> Scored:
    """``scored`` with every finding an active exception covers marked with its id and version; ``log_ms``:
    the event's record's log time (0: unknown). Pure."""
    if not index.by_scope:
        return scored
    marked = []
    changed = False
    for f in scored.findings:
        w = index.match(f.code, ev, log_ms)
        if w is not None:
            f = replace(f, exception_id=w.exception_id, exception_version=w.version)
            changed = True
        marked.append(f)
    return Scored(tuple(marked), scored.risk_score, scored.risk_level) if changed else scored


class ExceptionCache:
    """Follows the exceptions topic from its start; ``index`` is swapped whole, so reads need no lock."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None, *, registry: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topic = settings.topic_exceptions
        schemas = SchemaSet.load()
        self.serde = Serde(schemas, registry if registry is not None else make_registry(settings), record=RECORD,
                           subject=f"{self.topic}-value")
        self.index = ExceptionIndex()
        self.records = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ExceptionCache:
        self._thread = threading.Thread(target=self._follow, name="exceptions", daemon=True)
        self._thread.start()
        return self

    def add(self, value: bytes, offset: int | None = None) -> bool:
        """Fold one message into the index; False if it was refused (logged, counted, skipped): it does not
        decode, or a time of it is one the store cannot hold (the writer dead-letters that version, so no
        scorer may apply it), or folding it fails."""
        try:
            record = self.serde.decode(value).record
            for field in TIMES:
                if record.get(field) is not None:
                    check_store_time(record[field], field)
            index = self.index.with_record(record)
        except RegistryUnavailable:
            raise  # not the record's fault: read again (_step)
        except Exception as exc:  # one record must not stop the follower (followers.py)
            refused("exceptions", self.metrics, offset, exc)
            return False
        self.index = index
        self.records += 1
        return True

    def _follow(self) -> None:
        consumer = Consumer(self.settings.kafka_config(**{
            "group.id": f"agentgov-exceptions-{uuid.uuid4()}", "enable.auto.commit": False,
            "session.timeout.ms": self.settings.session_timeout_ms}))
        consumer.assign([TopicPartition(self.topic, 0, 0)])
        try:
            follow("exceptions", self.metrics, self._stop, lambda: self._step(consumer))
        finally:
            consumer.close()

    def _step(self, consumer: Consumer) -> None:
        take_each(consumer, consumer.consume(500, 0.5), self.add)
        if self.metrics is not None:
            self.metrics.exceptions_followed.set(len(self.index))
            self.metrics.exceptions_approved.set(self.index.approved())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
