"""A scorer counts access changes stamped far before their record reached the transitions topic
(``agentgov_backdated_access_changes_total``, ``AGENTGOV_BACKDATED_HOURS``): the event passed the age
limit and is stored, kept ``retention_days`` from storage, but its ``occurred_at`` files it among days long
past, where time-ranged reads and dashboards do not look."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pipeline.consumer import Scorer, _BatchStats, backdated
from pipeline.drafts import draft
from pipeline.events import TransitionDict
from pipeline.metrics import Metrics
from pipeline.scoring.engine import Scored
from pipeline.settings import Settings

HOUR_MS = 3_600_000
LOG_MS = 1_800_000_000_000


def event(action: str = "grant_entitlement", hours_before: float = 0) -> TransitionDict:
    ev: Any = draft(action=action, event_id=f"e-{action}-{hours_before}")
    ev["occurred_at"] = int(LOG_MS - hours_before * HOUR_MS)
    return ev  # type: ignore[no-any-return]


@pytest.mark.parametrize(("ev", "log_ms", "limit_ms", "expected"), [
    (event(hours_before=25), LOG_MS, 24 * HOUR_MS, True),
    (event("remove_role", hours_before=24 * 30), LOG_MS, 24 * HOUR_MS, True),  # a revoke backdated hides too
    (event("create_account", hours_before=24 * 30), LOG_MS, 24 * HOUR_MS, True),
    (event(hours_before=23), LOG_MS, 24 * HOUR_MS, False),
    (event("recommend", hours_before=24 * 30), LOG_MS, 24 * HOUR_MS, False),  # not an access change
    (event("step_up_auth", hours_before=24 * 30), LOG_MS, 24 * HOUR_MS, False),
    (event(hours_before=24 * 30), 0, 24 * HOUR_MS, False),  # no timestamp on the record: unknown
    (event(hours_before=24 * 30), -1, 24 * HOUR_MS, False),
    (event(hours_before=24 * 30), LOG_MS, 0, False),  # AGENTGOV_BACKDATED_HOURS=0: off
])
def test_backdated_is_an_access_change_stamped_more_than_the_limit_before_its_log_time(
        ev: TransitionDict, log_ms: int, limit_ms: int, expected: bool) -> None:
    assert backdated(ev, log_ms, limit_ms) is expected


class _Producer:
    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any, headers: Any) -> None:
        pass


class _Msg:
    def __init__(self, offset: int, log_ms: int) -> None:
        self._offset, self._log_ms = offset, log_ms

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, self._log_ms  # TIMESTAMP_CREATE_TIME


def scorer(hours: float) -> Scorer:
    """A scorer's publishing and accounting, without a broker."""
    s = Scorer.__new__(Scorer)
    s.settings = Settings.load(kafka_bootstrap="127.0.0.1:9", backdated_hours=hours)
    s.metrics = Metrics(CollectorRegistry())
    s.checkpoint = SimpleNamespace(producer=_Producer())  # type: ignore[assignment]
    s.backdated_ms = int(hours * HOUR_MS)
    s._refused, s._refusals = {}, {}
    return s


def test_a_scorer_counts_and_logs_backdated_access_changes_once_its_batch_commits(
        caplog: pytest.LogCaptureFixture) -> None:
    s = scorer(24)
    stats = _BatchStats()
    for offset, ev in enumerate([event(hours_before=48), event(hours_before=1), event("recommend", 48)]):
        s._publish(_Msg(offset, LOG_MS), ev, Scored((), 0, "none"), b"v", "digest", None, stats, LOG_MS)  # type: ignore[arg-type]
    samples = s.metrics.registry.get_sample_value
    assert samples("agentgov_backdated_access_changes_total") == 0  # not before the batch is committed
    with caplog.at_level(logging.WARNING, logger="pipeline.consumer"):
        s.account(stats, [])
    assert samples("agentgov_backdated_access_changes_total") == 1
    [record] = [r for r in caplog.records if "stamped long before" in r.getMessage()]
    assert record.kv == {"count": 1, "event_id": "e-grant_entitlement-48", "agent_id": "agent-jml-01",  # type: ignore[attr-defined]
                         "hours": 24.0}


def test_backdated_hours_zero_counts_nothing() -> None:
    s = scorer(0)
    stats = _BatchStats()
    s._publish(_Msg(0, LOG_MS), event(hours_before=24 * 300), Scored((), 0, "none"), b"v", "digest", None, stats,  # type: ignore[arg-type]
               LOG_MS)
    s.account(stats, [])
    assert s.metrics.registry.get_sample_value("agentgov_backdated_access_changes_total") == 0
