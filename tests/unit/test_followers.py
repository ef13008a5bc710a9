"""Followers of compacted topics (baselines, risk exceptions, delegation edges) refuse a bad record and go on.

Audit P1: a baseline with an integer ``agent_id`` (AttributeError in ``identity_key``, outside the try) or
``as_of_ms: 1e400`` (OverflowError, not caught) killed the follower thread for good, silently: baselines never
changed again and the baseline-age gauge froze, so ``AgentgovBaselineStale`` could not fire. One with
``as_of_ms`` in year 9999 made every real baseline look stale, and eviction dropped them all."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pipeline.baselines import BaselineCache, from_json, to_json
from pipeline.errors import RegistryUnavailable, ValidationError
from pipeline.followers import follow, take_each
from pipeline.metrics import Metrics
from pipeline.risk_exceptions import ExceptionCache
from pipeline.schemas import SchemaSet
from pipeline.scoring.context import AgentBaseline
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import FakeMessage

NOW = int(time.time() * 1000)
GOOD = {"agent_id": "agent-a", "events": 10, "actions": ["assign_role"], "systems": ["entra-id"],
        "entitlements": [], "inputs": [], "max_tier": 1, "grants_per_hour": 1.5, "stale_policy_share": 0.0,
        "as_of_ms": NOW}


def _doc(**changes: Any) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_a_published_baseline_reads_back_the_same() -> None:
    b = AgentBaseline("agent-a", 10, frozenset({"assign_role"}), frozenset({"entra-id"}), max_tier=1,
                      grants_per_hour=1.5, as_of_ms=NOW)
    assert from_json(to_json(b), NOW) == b
    assert from_json(_doc(grants_per_hour=2), NOW).grants_per_hour == 2.0  # an integral float, as JSON writes it


@pytest.mark.parametrize(("data", "field"), [
    (_doc(agent_id=7), "agent_id"),
    (_doc(agent_id=""), "agent_id"),
    (_doc(agent_id="a" * 513), "agent_id"),
    (b'{"agent_id": "a", "events": 1, "actions": [], "systems": [], "entitlements": [], "inputs": [], '
     b'"max_tier": 0, "grants_per_hour": 0, "stale_policy_share": 0, "as_of_ms": 1e400}', "as_of_ms"),
    (_doc(as_of_ms=NOW + 301_000), "as_of_ms"),  # beyond the 300 s skew
    (_doc(as_of_ms=253_402_300_799_000), "as_of_ms"),  # year 9999
    (_doc(as_of_ms=-1), "as_of_ms"),
    (_doc(as_of_ms=True), "as_of_ms"),
    (_doc(events="10"), "events"),
    (_doc(max_tier=9), "max_tier"),
    (_doc(grants_per_hour="NaN"), "grants_per_hour"),
    (b'{"agent_id": "a", "events": 1, "actions": [], "systems": [], "entitlements": [], "inputs": [], '
     b'"max_tier": 0, "grants_per_hour": NaN, "stale_policy_share": 0, "as_of_ms": 0}', "grants_per_hour"),
    (_doc(actions="assign_role"), "actions"),
    (_doc(systems=[1]), "systems"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "inputs"}).encode(), "inputs"),
], ids=["agent-int", "agent-empty", "agent-long", "as-of-1e400", "as-of-past-skew", "as-of-9999", "as-of-negative",
        "as-of-bool", "events-text", "tier-9", "rate-text", "rate-nan", "actions-text", "systems-int",
        "inputs-missing"])
def test_a_baseline_of_the_wrong_types_or_out_of_range_is_refused_naming_the_field(data: bytes, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        from_json(data, NOW)
    assert err.value.fields["field"] == field


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"[" * 100_000, b"null"],
                         ids=["empty", "not-utf8", "array", "string", "deep", "null"])
def test_a_baseline_that_is_not_a_json_object_is_refused(data: bytes) -> None:
    with pytest.raises(ValidationError) as err:
        from_json(data, NOW)
    assert err.value.reason == "malformed"


def test_the_cache_refuses_poison_counts_it_and_keeps_its_baselines() -> None:
    metrics = Metrics(CollectorRegistry())
    cache = BaselineCache(Settings(), metrics)
    assert cache.add(_doc(), 0)
    poison = [_doc(agent_id=7), _doc(as_of_ms=float("1e308") * 10), _doc(as_of_ms=253_402_300_799_000), b"zz"]
    assert [cache.add(p, i) for i, p in enumerate(poison, 1)] == [False] * 4
    assert cache.add(_doc(agent_id="agent-b"), 5)
    assert cache.evict() == 0 and set(cache.data) == {"agent-a", "agent-b"}  # a year-9999 one evicted them all
    assert cache.as_of_ms == NOW
    assert metrics.registry.get_sample_value("agentgov_follower_records_refused_total",
                                             {"follower": "baselines"}) == 4


def test_the_exception_cache_refuses_a_version_whose_times_the_store_cannot_hold() -> None:
    """The writer dead-letters such a version (it cannot be stored), so no scorer may apply it either."""
    metrics = Metrics(CollectorRegistry())
    cache = ExceptionCache(Settings(), metrics)
    serde = Serde(SchemaSet.load(), record="risk_exception")

    def version(exception_id: str, expires_at: int) -> bytes:
        return serde.encode({
            "exception_id": exception_id, "version": 1, "state": "active", "code": "AG-AUTH-001", "agent_id": "a",
            "workflow_id": None, "target_id": None, "entitlement": None, "justification": "j", "requester": "r",
            "approver": "x", "requested_at": NOW, "effective_at": NOW, "expires_at": expires_at, "ended_at": None,
            "updated_by": "u", "updated_at": NOW})

    assert cache.add(version("e1", 2**62), 0) is False
    assert cache.add(b"\x00garbage", 1) is False
    assert cache.add(version("e2", NOW + 86_400_000), 2) is True
    assert set(cache.index.latest) == {"e2"}
    assert metrics.registry.get_sample_value("agentgov_follower_records_refused_total",
                                             {"follower": "exceptions"}) == 2


def test_a_follower_step_that_raises_is_retried_and_the_thread_reports_when_it_stops(
        caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(CollectorRegistry())
    stop = threading.Event()
    steps: list[int] = []
    up: list[float | None] = []

    def step() -> None:
        steps.append(1)
        up.append(metrics.registry.get_sample_value("agentgov_follower_up", {"follower": "baselines"}))
        if len(steps) == 1:
            raise OverflowError("int too large to convert to float")
        stop.set()

    follow("baselines", metrics, stop, step)
    assert len(steps) == 2 and up == [1.0, 1.0]  # the error was waited out, not the end of the thread
    assert metrics.registry.get_sample_value("agentgov_follower_up", {"follower": "baselines"}) == 0.0
    assert any(r.getMessage() == "follower step failed; will retry" for r in caplog.records)
    assert not any(r.getMessage() == "follower stopped" for r in caplog.records)  # asked to stop: not an alarm

    stop.clear()
    with pytest.raises(SystemExit):
        follow("baselines", metrics, stop, lambda: (_ for _ in ()).throw(SystemExit(1)))
    assert metrics.registry.get_sample_value("agentgov_follower_up", {"follower": "baselines"}) == 0.0
    assert any(r.getMessage() == "follower stopped" for r in caplog.records)


def test_take_each_skips_tombstones_and_puts_the_consumer_back_on_a_record_the_registry_could_not_read() -> None:
    """Every follower hands its records to ``take`` through ``take_each``: a tombstone is skipped, a refused
    record is ``take``'s to log, and a registry that does not answer sends the consumer back to that record
    (seek) and raises, so ``follow`` waits and reads it again: the record is never skipped."""
    seeks: list[tuple[str, int, int]] = []
    consumer: Any = type("Consumer", (), {"seek": staticmethod(
        lambda tp: seeks.append((tp.topic, tp.partition, tp.offset)))})()
    taken: list[tuple[bytes, int]] = []

    def take(value: bytes, offset: int) -> bool:
        if value == b"down":
            raise RegistryUnavailable("registry did not answer")
        taken.append((value, offset))
        return True

    tombstone: Any = FakeMessage(topic="f", partition=0, offset=1)
    tombstone.value = lambda: None
    msgs = [FakeMessage(b"a", topic="f", offset=0), tombstone, FakeMessage(b"down", topic="f", offset=2),
            FakeMessage(b"never", topic="f", offset=3)]
    with pytest.raises(RegistryUnavailable):
        take_each(consumer, msgs, take)
    assert taken == [(b"a", 0)] and seeks == [("f", 0, 2)]
