"""Review writes: check a decision against the current state, publish it to Kafka, wait until it is stored.

Decisions are never written to the store directly: they go to ``agentgov.decisions.v1`` (exceptions also
to the compacted ``agentgov.exceptions.v1`` that scorers follow; true-positive closes also raise a
``RemediationRequest`` on ``agentgov.remediations.v1``), and the writer appends them. A write answers
only once its decision is visible in the store, so the page that follows shows it.

Optimistic concurrency: every form carries the version it was rendered from. Under one lock, the service
reads the current version, refuses a stale one with :class:`Conflict` (HTTP 409 with the current state),
publishes version + 1 and waits for it to be stored. One app instance serialises its writers this way;
several instances would need a partitioned owner per subject (docs/review.md, limits).

Every method here blocks (store queries, the producer's flush, :meth:`ReviewService.wait_stored`'s polling,
the lock): the app calls them in its thread pool (``run_in_threadpool``), never on the event loop, where one
5,000-finding bulk froze every other request for 35 s. The lock is a ``threading.Lock`` for that reason.

Example::

    svc = ReviewService(settings, store, policy)
    svc.transition(actor, "evt-1/AG-ESC-003", "acknowledge", expected_version=0)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from ..errors import PublishError
from ..metrics import ReviewMetrics
from ..schemas import SchemaSet
from ..scoring.policy import LoadedPolicy
from ..serde import Serde, make_registry
from ..settings import Settings
from .model import (
    Actor,
    Conflict,
    ReviewError,
    check_not_own,
    check_transition,
    decide_exception,
    decision,
    finding_id,
    new_exception,
    require_role,
    split_finding_id,
)
from .store import QueueFilter, ReviewStore

log = logging.getLogger(__name__)
BULK_MAX = 5000


def now_ms() -> int:
    return int(time.time() * 1000)


class NotStored(ReviewError):
    """Published, but not visible in the store in time (the writer is behind): HTTP 503, safe to reload."""

    status = 503


class ReviewService:
    """All state-changing operations of the review app."""

    def __init__(self, settings: Settings, store: ReviewStore, policy: LoadedPolicy,
                 metrics: ReviewMetrics | None = None, *, registry: Any = None) -> None:
        self.settings, self.store, self.policy, self.metrics = settings, store, policy, metrics
        schemas = SchemaSet.load()
        registry = registry if registry is not None else make_registry(settings)
        self.serdes = {
            name: Serde(schemas, registry, record=name, subject=f"{topic}-value")
            for name, topic in (("review_decision", settings.topic_decisions),
                                ("risk_exception", settings.topic_exceptions),
                                ("remediation_request", settings.topic_remediations))
        }
        self.producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all"}))
        self._lock = threading.Lock()

    # -- publishing -------------------------------------------------------------------------------
    def _publish(self, record_name: str, topic: str, key: str, record: dict[str, Any]) -> None:
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        self.producer.produce(topic, self.serdes[record_name].encode(record), key=key.encode(), on_delivery=delivered)
        left = self.producer.flush(30)
        if left or errors:
            raise PublishError(f"could not publish to {topic}: {errors or 'timed out'}", topic=topic)

    def wait_stored(self, subject_id: str, version: int, *, exception: bool = False, seconds: float | None = None
                    ) -> None:
        """Return once the decision (and for an exception, its record) is readable from the store, within
        ``seconds`` (default ``review_store_wait_seconds``); else raise :class:`NotStored`. The workbench's
        services (review, recertification, attribute review) all publish, then wait here.

        An exception's record and its decision go to two topics; the writer may store them in separate
        inserts, so waiting for the decision alone let the next request read the previous version."""
        deadline = time.monotonic() + (seconds or self.settings.review_store_wait_seconds)
        while time.monotonic() < deadline:
            if self.store.has_decision(subject_id, version) and (
                    not exception or self.store.has_exception_version(subject_id, version)):
                return
            time.sleep(0.1)
        raise NotStored(f"decision published but not yet stored (subject {subject_id} v{version}); reload shortly")

    # -- findings ---------------------------------------------------------------------------------
    def transition(self, actor: Actor, fid: str, action: str, expected_version: int, *,
                   classification: str | None = None, reason: str | None = None, comment: str | None = None
                   ) -> dict[str, Any]:
        """Acknowledge, close or reopen one finding. Returns the stored decision."""
        require_role(actor.roles, "reviewer")
        event_id, code = split_finding_id(fid)
        finding = self.store.finding(event_id, code)
        if finding is None:
            raise ReviewError(f"no such finding {fid}")
        if action in ("acknowledge", "close"):  # reopening only puts it back in the queue
            check_not_own(actor.user, self.store.parties(finding), f"finding {fid}")
        with self._lock:
            state, version, assignee = self.store.state("finding", fid)
            if version != expected_version:
                raise Conflict(f"finding changed since the form was loaded: it is {state} at version {version}",
                               state=state, version=version, assignee=assignee)
            to_state = check_transition(state, action, classification=classification, reason=reason,
                                        comment=comment)
            t = now_ms()
            payload = {"run_id": finding["run_id"], "agent_id": finding["agent_id"], "code": code,
                       "severity": finding["severity"], "event_id": event_id,
                       "assignee": actor.user if to_state == "acknowledged" else assignee}
            record = decision(f"finding.{action}", "finding", fid, version + 1, actor, t, from_state=state,
                              to_state=to_state, classification=classification if action == "close" else None,
                              reason=reason if action == "close" else None, comment=comment or None, payload=payload)
            if action == "close" and classification == "true_positive":
                record["payload"]["remediation_id"] = self._remediate(finding, record, actor, t)
            self._publish("review_decision", self.settings.topic_decisions, fid, record)
            self.wait_stored(fid, version + 1)
        if self.metrics is not None:
            self.metrics.decisions.labels(kind=record["kind"]).inc()
            age = max(0.0, (t - finding["occurred_at_ms"]) / 1000)
            if action == "acknowledge":
                self.metrics.time_to_acknowledge.labels(severity=finding["severity"]).observe(age)
            elif action == "close":
                self.metrics.time_to_close.labels(severity=finding["severity"]).observe(age)
        log.info("finding decided", extra={"kv": {"finding": fid, "action": action, "actor": actor.user,
                                                  "version": version + 1}})
        return record

    def _remediate(self, finding: dict[str, Any], record: dict[str, Any], actor: Actor, t: int) -> str:
        request_id = str(uuid.uuid4())
        self._publish("remediation_request", self.settings.topic_remediations, record["subject_id"], {
            "request_id": request_id, "decision_id": record["decision_id"], "finding_id": record["subject_id"],
            "code": finding["code"], "severity": finding["severity"], "agent_id": finding["agent_id"],
            "run_id": finding["run_id"], "target_id": finding["target_id"],
            "related_event_ids": list(finding["related_event_ids"]) or [finding["event_id"]],
            "reason": record["reason"], "comment": record["comment"] or "", "requested_by": actor.user,
            "requested_at": t})
        return request_id

    def bulk(self, actor: Actor, action: str, *, selection: dict[str, int] | None = None,
             matching: QueueFilter | None = None, classification: str | None = None, reason: str | None = None,
             comment: str | None = None) -> dict[str, Any]:
        """Apply one action to a selection (finding id -> version seen) or to everything matching a filter.

        Each finding gets its own decision. Stale or disallowed ones are reported, not forced."""
        require_role(actor.roles, "reviewer")
        if selection is not None and len(selection) > BULK_MAX:
            # The same cap as a filter: each entry is a publish and a store wait under the write lock, so an
            # unbounded selection let one request hold every other writer off for hours.
            raise ReviewError(f"{len(selection)} findings selected; at most {BULK_MAX} per bulk decision")
        if matching is not None:
            rows, total = self.store.queue(matching, now_ms(), limit=BULK_MAX)
            if total > BULK_MAX:
                raise ReviewError(f"{total} findings match; narrow the filter to at most {BULK_MAX}")
            selection = {finding_id(r["event_id"], r["code"]): int(r["version"]) for r in rows}
        if not selection:
            raise ReviewError("nothing selected")
        return apply_each(selection, lambda fid, version: self.transition(
            actor, fid, action, version, classification=classification, reason=reason, comment=comment))

    # -- exceptions -------------------------------------------------------------------------------
    def request_exception(self, actor: Actor, **scope: Any) -> dict[str, Any]:
        record = new_exception(actor, now_ms(), max_days=self.policy.governance.review.exception_max_days, **scope)
        self._store_exception(actor, record, "request", None, comment=None)
        return record

    def decide_exception(self, actor: Actor, exception_id: str, action: str, expected_version: int,
                         comment: str | None = None) -> dict[str, Any]:
        with self._lock:
            current = self.store.exception(exception_id)
            if current is None:
                raise ReviewError(f"no such exception {exception_id}")
            if current["version"] != expected_version:
                raise Conflict(f"exception changed since the form was loaded: version {current['version']}",
                               state=current["state"], version=current["version"])
            nxt = decide_exception(current, action, actor, now_ms(), comment)
            self._store_exception(actor, nxt, action, current["state"], comment=(comment or "").strip() or None,
                                  locked=True)
        return nxt

    def _store_exception(self, actor: Actor, record: dict[str, Any], action: str, from_state: str | None, *,
                         comment: str | None, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                self._store_exception(actor, record, action, from_state, comment=comment, locked=True)
            return
        xid = record["exception_id"]
        payload = {"code": record["code"], "agent_id": record["agent_id"],
                   "expires_at": str(record["expires_at"])}
        d = decision(f"exception.{action}", "exception", xid, record["version"], actor, record["updated_at"],
                     from_state=from_state, to_state=record["state"], comment=comment or None, payload=payload)
        self._publish("risk_exception", self.settings.topic_exceptions, xid, record)
        self._publish("review_decision", self.settings.topic_decisions, xid, d)
        self.wait_stored(xid, record["version"], exception=True)
        if self.metrics is not None:
            self.metrics.decisions.labels(kind=d["kind"]).inc()
        log.info("exception decided", extra={"kv": {"exception": xid, "action": action, "actor": actor.user,
                                                    "version": record["version"]}})

    def close(self) -> None:
        self.producer.flush(10)


def apply_each(selection: dict[str, int], act: Callable[[str, int], Any]) -> dict[str, Any]:
    """A bulk action: ``act(id, expected_version)`` on each selected id; one refusal does not stop the rest."""
    done: list[str] = []
    refused: dict[str, str] = {}
    for sid, version in selection.items():
        try:
            act(sid, version)
            done.append(sid)
        except ReviewError as exc:
            refused[sid] = exc.message
    return {"done": done, "refused": refused}
