"""ReviewService's read-your-writes: a decision answers only once everything the next request reads is stored.

The writer stores each topic in its own insert, so the record of an exception can become readable after its
decision. The fake store here plays that order; the service must not answer in between."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.review.model import Actor, Conflict, ReviewError
from pipeline.review.service import ReviewService
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
