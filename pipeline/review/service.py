"""Review writes: check a decision against the current state, publish it to Kafka, wait until it is stored.

Decisions are never written to the store directly: they go to ``agentgov.decisions.v1`` (exceptions also
to the compacted ``agentgov.exceptions.v1`` that scorers follow; true-positive closes also raise a
``RemediationRequest`` on ``agentgov.remediations.v1``), and the writer appends them. A write answers
only once its decision is visible in the store, so the page that follows shows it.

Optimistic concurrency: every form carries the version it was rendered from. Under one lock
(:meth:`ReviewService.writing`, which every write path of the workbench takes), the service reads the current
version, refuses a stale one with :class:`Conflict` (HTTP 409 with the current state), publishes version + 1
and waits for it to be stored. One app instance serialises its writers this way; several instances would need
a partitioned owner per subject (docs/review.md, limits). A decision published but not yet visible when its
request gave up (503) is remembered, and the subject takes no other decision until it is visible: otherwise
the next request read the version before it and published a second decision at the same version.

Write-ahead: the decision (the audit record) is published before its effect (the ``RiskException`` scorers
act on, the ``RemediationRequest``). A failure in between leaves a recorded decision whose effect is owed, and
the next write on the subject publishes the effect first; never an effect that no decision accounts for.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
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
    remediation_id,
    require_role,
    split_finding_id,
)
from .store import QueueFilter, ReviewStore

log = logging.getLogger(__name__)
BULK_MAX = 5000
PENDING_MAX = 10_000
PENDING_EXPIRY_SECONDS = 3600.0
"""How long a published decision that never showed up in the store holds its subject: generous (a writer an
hour behind is an incident of its own), but not for ever, so one lost record does not freeze a subject."""


def now_ms() -> int:
    return int(time.time() * 1000)


class NotStored(ReviewError):
    """Published, but not visible in the store in time (the writer is behind): HTTP 503, safe to reload."""

    status = 503


@dataclass
class Pending:
    """A decision published on a subject and not yet seen in the store, and the effects it still owes."""

    version: int
    exception: bool  # visible means its RiskException record too (wait_stored's ``exception``)
    since: float  # time.monotonic() of the publish
    owed: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)  # (record, topic, key, value)


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
        self._pending: dict[str, Pending] = {}  # subject id -> its published, not yet visible decision; oldest first
        self._pending_lock = threading.Lock()  # wait_stored also runs outside the write lock (campaign create)

    # -- the write lock ---------------------------------------------------------------------------
    @contextmanager
    def writing(self, subject_id: str) -> Iterator[None]:
        """The write lock, for a decision on ``subject_id``: every write path of the workbench (findings,
        exceptions, recertification, attribute reviews) reads the subject's version and publishes the next
        one inside it.

        First, a decision on the subject that was published but not yet visible (its request answered 503)
        is waited for, and the effects it still owes are published: reading the version before it would let
        this write pass the version check with the same expected version and publish a second, conflicting
        decision at that version. While it is still not visible the write is refused (:class:`NotStored`,
        503), never published."""
        with self._lock:
            self._settle(subject_id)
            yield

    def _settle(self, subject_id: str) -> None:
        with self._pending_lock:
            p = self._pending.get(subject_id)
        if p is None:
            return
        kv = {"subject": subject_id, "version": p.version, "age_s": round(time.monotonic() - p.since, 1)}
        if time.monotonic() - p.since > PENDING_EXPIRY_SECONDS:
            self._forget(subject_id, p.version)
            log.warning("published decision never seen stored; its subject takes decisions again",
                        extra={"kv": {**kv, "owed": [o[0] for o in p.owed]}})
            return
        while p.owed:  # a PublishError here answers 503 again, and the next write tries again
            name, topic, key, value = p.owed[0]
            self._publish(name, topic, key, value)
            p.owed.pop(0)
            log.info("owed effect of a decision published", extra={"kv": {**kv, "record": name}})
        if not self._visible(subject_id, p.version, exception=p.exception):
            log.warning("write refused: an earlier decision is still being stored", extra={"kv": kv})
            raise NotStored(f"an earlier decision on {subject_id} (version {p.version}) is still being stored; "
                            "reload shortly")
        self._forget(subject_id, p.version)

    def _published(self, subject_id: str, version: int, *, exception: bool = False) -> None:
        """Remember that ``version`` of ``subject_id`` is published, until it is seen stored (bounded)."""
        now = time.monotonic()
        with self._pending_lock:
            self._pending.pop(subject_id, None)
            while self._pending:
                oldest_id, oldest = next(iter(self._pending.items()))
                if len(self._pending) < PENDING_MAX and now - oldest.since <= PENDING_EXPIRY_SECONDS:
                    break
                del self._pending[oldest_id]
                log.warning("forgot a published decision never seen stored", extra={"kv": {
                    "subject": oldest_id, "version": oldest.version, "age_s": round(now - oldest.since, 1),
                    "owed": [o[0] for o in oldest.owed]}})
            self._pending[subject_id] = Pending(version, exception, now)

    def _forget(self, subject_id: str, version: int) -> None:
        with self._pending_lock:
            p = self._pending.get(subject_id)
            if p is not None and p.version <= version:
                del self._pending[subject_id]

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

    def _publish_decision(self, record: dict[str, Any], *, exception: bool = False) -> None:
        """Publish a decision (keyed by its subject) and remember it until it is seen stored."""
        sid = record["subject_id"]
        self._publish("review_decision", self.settings.topic_decisions, sid, record)
        self._published(sid, record["subject_version"], exception=exception)

    def _publish_effect(self, record: dict[str, Any], name: str, topic: str, value: dict[str, Any],
                        what: str) -> None:
        """Publish the effect of the decision ``record``, published just before. When it fails, the decision
        stands (it is the audit record) and the effect is owed: the next write on the subject publishes it
        first (:meth:`writing`). The request answers 503 saying so."""
        sid, version = record["subject_id"], record["subject_version"]
        try:
            self._publish(name, topic, sid, value)
        except PublishError as exc:
            with self._pending_lock:
                p = self._pending.get(sid)
                if p is not None and p.version == version:
                    p.owed.append((name, topic, sid, value))
            log.error("decision published, its effect not", extra={"kv": {
                "subject": sid, "version": version, "decision_id": record["decision_id"], "record": name,
                "error": exc.message[:300]}})
            raise PublishError(exc.message, topic=topic, hint=(
                f"the decision on {sid} is recorded, but its {what} could not be published yet; "
                "retry to publish it")) from exc

    def wait_stored(self, subject_id: str, version: int, *, exception: bool = False, seconds: float | None = None
                    ) -> None:
        """Return once the decision (and for an exception, its record) is readable from the store, within
        ``seconds`` (default ``review_store_wait_seconds``); else raise :class:`NotStored`. The workbench's
        services (review, recertification, attribute review) all publish, then wait here.

        An exception's record and its decision go to two topics; the writer may store them in separate
        inserts, so waiting for the decision alone let the next request read the previous version.

        Until it is visible, the version is remembered as published (:meth:`writing`): a request that gave up
        here has published it all the same."""
        with self._pending_lock:
            known = self._pending.get(subject_id)
        if known is None or known.version != version:
            self._published(subject_id, version, exception=exception)
        if not self._visible(subject_id, version, exception=exception, seconds=seconds):
            raise NotStored(f"decision published but not yet stored (subject {subject_id} v{version}); "
                            "reload shortly")
        self._forget(subject_id, version)

    def _visible(self, subject_id: str, version: int, *, exception: bool = False, seconds: float | None = None
                 ) -> bool:
        deadline = time.monotonic() + (seconds or self.settings.review_store_wait_seconds)
        while True:
            if self.store.has_decision(subject_id, version) and (
                    not exception or self.store.has_exception_version(subject_id, version)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

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
        with self.writing(fid):
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
            request = None
            if action == "close" and classification == "true_positive":
                request = self._remediation(finding, record, actor, t)
                record["payload"]["remediation_id"] = request["request_id"]
            self._publish_decision(record)  # the audit record first: never a request no decision accounts for
            if request is not None:
                self._publish_effect(record, "remediation_request", self.settings.topic_remediations, request,
                                     "remediation request")
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

    @staticmethod
    def _remediation(finding: dict[str, Any], record: dict[str, Any], actor: Actor, t: int) -> dict[str, Any]:
        """The request a true-positive close raises; its id follows from the decision's, so a retried close
        raises the same request (a remediation system dedupes by ``request_id``)."""
        return {
            "request_id": remediation_id(record["decision_id"]), "decision_id": record["decision_id"],
            "finding_id": record["subject_id"],
            "code": finding["code"], "severity": finding["severity"], "agent_id": finding["agent_id"],
            "run_id": finding["run_id"], "target_id": finding["target_id"],
            "related_event_ids": list(finding["related_event_ids"]) or [finding["event_id"]],
            "reason": record["reason"], "comment": record["comment"] or "", "requested_by": actor.user,
            "requested_at": t}

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
        with self.writing(exception_id):
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
            with self.writing(record["exception_id"]):
                self._store_exception(actor, record, action, from_state, comment=comment, locked=True)
            return
        xid = record["exception_id"]
        payload = {"code": record["code"], "agent_id": record["agent_id"],
                   "expires_at": str(record["expires_at"])}
        d = decision(f"exception.{action}", "exception", xid, record["version"], actor, record["updated_at"],
                     from_state=from_state, to_state=record["state"], comment=comment or None, payload=payload)
        self._publish_decision(d, exception=True)  # the audit record first: never a RiskException unaccounted for
        self._publish_effect(d, "risk_exception", self.settings.topic_exceptions, record, "exception record")
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
