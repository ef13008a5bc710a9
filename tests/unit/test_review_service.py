"""ReviewService's read-your-writes: a decision answers only once everything the next request reads is stored.

The writer stores each topic in its own insert, so the record of an exception can become readable after its
decision. The fake store here plays that order; the service must not answer in between."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.errors import PublishError
from pipeline.review.model import REMEDIATION_IDS, Actor, Conflict, ReviewError
from pipeline.review.service import PENDING_EXPIRY_SECONDS, NotStored, ReviewService
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings

RITA, BOB = Actor("rita", ("reviewer", "approver")), Actor("bob", ("approver",))


class LaggingStore:
    """Decisions are readable at once; an exception's record only ``lag`` reads after it was published."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.decisions: set[tuple[str, int]] = set()
        self.comments: list[str | None] = []  # of every decision published, in order
        self.pending: list[list[Any]] = []  # [reads left, record]
        self.exceptions: dict[tuple[str, int], dict[str, Any]] = {}

    def _tick(self) -> None:
        for item in self.pending:
            item[0] -= 1
            if item[0] < 0:
                rec = item[1]
                self.exceptions[(rec["exception_id"], rec["version"])] = rec
        self.pending = [p for p in self.pending if p[0] >= 0]

    def publish(self, record_name: str, record: dict[str, Any]) -> None:
        if record_name == "review_decision":
            self.decisions.add((record["subject_id"], record["subject_version"]))
            self.comments.append(record["comment"])
        elif record_name == "risk_exception":
            self.pending.append([self.lag, dict(record)])

    def has_decision(self, subject_id: str, version: int) -> bool:
        return (subject_id, version) in self.decisions

    def has_exception_version(self, exception_id: str, version: int) -> bool:
        self._tick()
        return (exception_id, version) in self.exceptions

    def exception(self, exception_id: str) -> dict[str, Any] | None:
        self._tick()
        versions = [rec for (xid, _v), rec in self.exceptions.items() if xid == exception_id]
        return max(versions, key=lambda r: r["version"]) if versions else None


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> tuple[ReviewService, LaggingStore]:
    settings = Settings(schema_registry_url="mock://review-service", review_store_wait_seconds=5)
    store = LaggingStore(lag=3)
    svc = ReviewService(settings, store, load_policy())  # type: ignore[arg-type]
    monkeypatch.setattr(svc, "_publish", lambda name, _topic, _key, record: store.publish(name, record))
    monkeypatch.setattr("pipeline.review.service.time.sleep", lambda _s: None)
    return svc, store


def test_an_exception_decision_answers_only_once_its_record_is_readable(
        service: tuple[ReviewService, LaggingStore]) -> None:
    svc, store = service
    expires = int((datetime.now(UTC) + timedelta(days=3)).timestamp() * 1000)
    xid = svc.request_exception(RITA, code="AG-ESC-003", agent_id="agent-a", justification="batch job",
                                expires_at_ms=expires)["exception_id"]
    assert store.exception(xid) is not None and store.exception(xid)["version"] == 1  # type: ignore[index]
    svc.decide_exception(BOB, xid, "approve", expected_version=1)
    assert store.has_exception_version(xid, 2)
    # A second decision made against the version before the approval is stale, not an invalid transition.
    with pytest.raises(Conflict):
        svc.decide_exception(BOB, xid, "revoke", expected_version=1)
    with pytest.raises(ReviewError, match="revoke needs a comment"):
        svc.decide_exception(BOB, xid, "revoke", expected_version=2, comment=" ")
    revoked = svc.decide_exception(BOB, xid, "revoke", expected_version=2, comment="batch job retired")
    assert revoked["state"] == "revoked"
    assert store.comments[-1] == "batch job retired"


ALICE = Actor("alice", ("reviewer",))
FID = "evt-1/AG-ESC-003"
FINDING = {"event_id": "evt-1", "code": "AG-ESC-003", "severity": "critical", "run_id": "run-1",
           "agent_id": "agent-1", "target_id": "u-9", "related_event_ids": [], "occurred_at_ms": 1}
CLOSE = {"classification": "true_positive", "reason": "confirmed_misuse", "comment": "confirmed"}


class SlowWriterStore:
    """A finding whose decisions become readable only once ``writer_caught_up`` is set (the writer is behind)."""

    def __init__(self) -> None:
        self.writer_caught_up = False
        self.published: list[tuple[str, Any, Any]] = []  # (record, subject_version, classification or request id)
        self.decisions: dict[tuple[str, int], dict[str, Any]] = {}

    def publish(self, record_name: str, record: dict[str, Any]) -> None:
        if record_name == "review_decision":
            self.decisions[(record["subject_id"], record["subject_version"])] = record
            self.published.append((record_name, record["subject_version"], record["classification"]))
        else:
            self.published.append((record_name, None, record["request_id"]))

    def finding(self, _event_id: str, _code: str) -> dict[str, Any]:
        return FINDING

    def parties(self, _finding: dict[str, Any]) -> set[str]:
        return {"u-9"}

    def state(self, _kind: str, subject_id: str) -> tuple[str, int, str]:
        seen = [r for (s, _v), r in self.decisions.items() if s == subject_id] if self.writer_caught_up else []
        last = max(seen, key=lambda r: r["subject_version"], default=None)
        return ("new", 0, "") if last is None else (last["to_state"], last["subject_version"], "")

    def has_decision(self, subject_id: str, version: int) -> bool:
        return self.writer_caught_up and (subject_id, version) in self.decisions


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> tuple[ReviewService, SlowWriterStore]:
    settings = Settings(schema_registry_url="mock://review-service", review_store_wait_seconds=0.05)
    store = SlowWriterStore()
    svc = ReviewService(settings, store, load_policy())  # type: ignore[arg-type]
    monkeypatch.setattr(svc, "_publish", lambda name, _topic, _key, record: store.publish(name, record))
    monkeypatch.setattr("pipeline.review.service.time.sleep", lambda _s: None)
    return svc, store


def test_a_decision_published_but_not_yet_stored_holds_its_subject(slow: tuple[ReviewService, SlowWriterStore]
                                                                    ) -> None:
    """The first close answers 503 with its decision published. Before, the lock was released and the next
    request read version 0 again: the retry published a second remediation request and another reviewer a
    false positive at the same version 1."""
    svc, store = slow
    with pytest.raises(NotStored, match="not yet stored"):
        svc.transition(ALICE, FID, "close", 0, **CLOSE)
    assert [p[:2] for p in store.published] == [("review_decision", 1), ("remediation_request", None)]
    with pytest.raises(NotStored, match=f"an earlier decision on {FID} .* is still being stored"):
        svc.transition(ALICE, FID, "close", 0, **CLOSE)
    with pytest.raises(NotStored, match="still being stored"):
        svc.transition(RITA, FID, "close", 0, classification="false_positive", reason="expected_behaviour",
                       comment="fine")
    assert len(store.published) == 2  # refused, never published
    store.writer_caught_up = True  # visible now: the stale form is a conflict, and the subject is free again
    with pytest.raises(Conflict, match="closed at version 1"):
        svc.transition(RITA, FID, "close", 0, classification="false_positive", reason="expected_behaviour",
                       comment="fine")
    svc.transition(RITA, FID, "reopen", 1)
    assert not svc._pending


def test_a_held_subject_is_released_after_the_expiry(slow: tuple[ReviewService, SlowWriterStore],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A decision that never shows up (lost, or the writer an hour behind) does not freeze its subject."""
    svc, store = slow
    with pytest.raises(NotStored):
        svc.transition(ALICE, FID, "acknowledge", 0)
    svc._pending[FID].since -= PENDING_EXPIRY_SECONDS + 1
    caplog.set_level("WARNING", logger="pipeline.review.service")
    with pytest.raises(NotStored, match="decision published but not yet stored"):  # published again
        svc.transition(ALICE, FID, "acknowledge", 0)
    assert [p[:2] for p in store.published] == [("review_decision", 1)] * 2
    assert any(r.getMessage().startswith("published decision never seen stored") for r in caplog.records)


def test_pending_decisions_are_bounded(slow: tuple[ReviewService, SlowWriterStore],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    svc, _ = slow
    monkeypatch.setattr("pipeline.review.service.PENDING_MAX", 3)
    for n in range(5):
        svc._published(f"s{n}", 1)
    assert list(svc._pending) == ["s2", "s3", "s4"]  # the oldest forgotten first


def test_decision_and_remediation_ids_are_the_same_for_an_exact_retry(
        slow: tuple[ReviewService, SlowWriterStore]) -> None:
    """After a restart the app forgets what it published: the same actor's same close publishes the same
    decision id (one row in the ReplacingMergeTree) and the same remediation request id."""
    svc, store = slow
    ids = []
    for _restart in range(2):
        svc._pending.clear()
        with pytest.raises(NotStored):
            svc.transition(ALICE, FID, "close", 0, **CLOSE)
        ids.append((store.decisions[(FID, 1)]["decision_id"], store.published[-1][2]))
    assert ids[0] == ids[1]
    assert ids[0][1] == str(uuid.uuid5(REMEDIATION_IDS, ids[0][0]))
    svc._pending.clear()
    with pytest.raises(NotStored):
        svc.transition(RITA, FID, "close", 0, **CLOSE)
    assert store.decisions[(FID, 1)]["decision_id"] != ids[0][0]  # another actor's decision is another row


def test_a_decision_goes_before_its_effect_and_a_failed_effect_is_owed(
        service: tuple[ReviewService, LaggingStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """Write-ahead: the approval's decision is published before the RiskException scorers act on. When the
    record fails after it, the request answers with a PublishError saying the decision stands, and the
    retry publishes the record first (then sees the approval: 409)."""
    svc, store = service
    expires = int((datetime.now(UTC) + timedelta(days=3)).timestamp() * 1000)
    xid = svc.request_exception(RITA, code="AG-ESC-003", agent_id="agent-a", justification="batch job",
                                expires_at_ms=expires)["exception_id"]
    order: list[str] = []
    broker_down = [True]

    def publish(name: str, _topic: str, _key: str, record: dict[str, Any]) -> None:
        order.append(name)
        if name == "risk_exception" and broker_down[0]:
            raise PublishError("broker gone", topic=_topic)
        store.publish(name, record)

    monkeypatch.setattr(svc, "_publish", publish)
    with pytest.raises(PublishError) as err:
        svc.decide_exception(BOB, xid, "approve", expected_version=1)
    assert order == ["review_decision", "risk_exception"]
    assert "is recorded, but its exception record could not be published" in err.value.fields["hint"]
    assert store.exception(xid)["state"] == "requested"  # type: ignore[index]
    broker_down[0] = False
    with pytest.raises(Conflict):
        svc.decide_exception(BOB, xid, "approve", expected_version=1)
    assert order[2:] == ["risk_exception"]  # the owed record, and no second decision
    assert store.exception(xid)["state"] == "active"  # type: ignore[index]


def test_a_true_positive_close_publishes_its_decision_before_the_remediation_request(
        slow: tuple[ReviewService, SlowWriterStore], monkeypatch: pytest.MonkeyPatch) -> None:
    svc, store = slow

    def publish(name: str, topic: str, _key: str, record: dict[str, Any]) -> None:
        if name == "remediation_request":
            raise PublishError("broker gone", topic=topic)
        store.publish(name, record)

    monkeypatch.setattr(svc, "_publish", publish)
    with pytest.raises(PublishError, match="broker gone"):
        svc.transition(ALICE, FID, "close", 0, **CLOSE)
    assert [p[0] for p in store.published] == ["review_decision"]
    assert svc._pending[FID].owed[0][0] == "remediation_request"
