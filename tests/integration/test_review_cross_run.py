"""Cross-run findings (AG-XRN-*) in the review workbench, on the embedded store.

The correlator's findings are stored in ``cross_run_findings`` (one row per finding_id); migration 006
copies each into ``findings`` as a finding of the event that completed the chain. These tests drive the
store the way the writer's correlation task does (``CorrelationStore`` rows), then read it the way the
workbench does (``ReviewStore``): the queue lists the chain, the finding page names every step, a replayed
finding stays one row, and a store migrated to 006 after holding cross-run findings gets them back-filled.
The correlator-to-queue path over the broker is in test_correlation.py.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import pipeline.sinks.clickhouse as ch
from pipeline.correlations import COLUMNS, TABLE
from pipeline.review.store import QueueFilter, ReviewStore
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded

pytestmark = pytest.mark.integration


def finding(agent: str, finding_id: str, event_id: str, code: str = "AG-XRN-001") -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "finding_id": finding_id, "code": code, "severity": "critical", "category": "escalation",
        "pattern": "tier_stepping", "message": f"tier 1 -> 2 -> 3 over 3 runs by {agent}",
        "entity_key": "target:u-1", "event_id": event_id, "run_id": "run-c", "agent_id": agent,
        "occurred_at": now, "related_event_ids": ["e-a", "e-b", event_id], "related_run_ids": ["run-a", "run-b",
                                                                                               "run-c"],
        "related_partitions": [0, 3, 5], "refs": ["OWASP-ASI03"], "detected_at": now,
        "correlator_version": "1", "governance_policy_version": "p1",
    }


def store(sink: ClickHouseSink, *rows: dict[str, Any], token: str) -> None:
    """What CorrelationStore.poll_once inserts (a dedup token per batch)."""
    sink.client.insert(f"{sink.database}.{TABLE}", [[r[c] for c in COLUMNS] for r in rows],
                       column_names=list(COLUMNS), settings={"insert_deduplication_token": token,
                                                             "insert_deduplicate": 1})


def sink_for(chdb_path: Path) -> ClickHouseSink:
    return ClickHouseSink(open_embedded(chdb_path), f"x{uuid.uuid4().hex[:10]}")


def test_cross_run_findings_are_in_the_queue_once_with_every_step(chdb_path: Path) -> None:
    sink = sink_for(chdb_path)
    sink.migrate()
    agent = f"agent-{uuid.uuid4().hex[:6]}"
    first = finding(agent, "f-1", "e-c")
    store(sink, first, token="batch-1")
    store(sink, first, token="batch-2-replayed")  # a replay publishes the same finding_id again
    review = ReviewStore(sink)
    rows, total = review.queue(QueueFilter(agent=agent), int(time.time() * 1000))
    assert total == 1 and [(r["event_id"], r["code"], r["status"]) for r in rows] == [("e-c", "AG-XRN-001", "new")]
    assert rows[0]["related_event_ids"] == ["e-a", "e-b", "e-c"]
    page = review.finding("e-c", "AG-XRN-001")
    assert page is not None and page["message"] == first["message"] and page["severity"] == "critical"
    sink.client.command(f"DROP DATABASE {sink.database}")


def test_the_queue_filtered_by_agent_takes_every_spelling_of_it(chdb_path: Path) -> None:
    """An agent is one identity in any case (docs/guarantees.md): filtering the queue by ``Agent-X`` lists the
    findings of ``agent-x`` and ``AGENT-X`` too, and no other agent's."""
    sink = sink_for(chdb_path)
    sink.migrate()
    base = f"agent-{uuid.uuid4().hex[:6]}"
    store(sink, finding(base, "f-lower", "e-1"), finding(base.upper(), "f-upper", "e-2"),
          finding(f"{base}-other", "f-other", "e-3"), token="batch-1")
    review = ReviewStore(sink)
    rows, total = review.queue(QueueFilter(agent=base.title()), int(time.time() * 1000))
    assert total == 2 and sorted(r["event_id"] for r in rows) == ["e-1", "e-2"]
    sink.client.command(f"DROP DATABASE {sink.database}")


def test_a_store_migrated_to_006_back_fills_its_cross_run_findings(
        chdb_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = sink_for(chdb_path)
    everything = ch.migrations()
    monkeypatch.setattr(ch, "migrations", lambda: [m for m in everything if m[0] < 6])
    assert 6 not in sink.migrate()
    agent = f"agent-{uuid.uuid4().hex[:6]}"
    store(sink, finding(agent, "f-old", "e-old", code="AG-XRN-005"), token="before-006")
    review = ReviewStore(sink)
    assert review.queue(QueueFilter(agent=agent), int(time.time() * 1000))[1] == 0  # 005 has no view for it
    monkeypatch.setattr(ch, "migrations", lambda: everything)
    assert sink.migrate() == [v for v, _, _ in everything if v >= 6]
    store(sink, finding(agent, "f-new", "e-new"), token="after-006")
    rows, total = review.queue(QueueFilter(agent=agent), int(time.time() * 1000))
    assert total == 2 and {(r["event_id"], r["code"]) for r in rows} == {("e-old", "AG-XRN-005"),
                                                                         ("e-new", "AG-XRN-001")}
    assert sink.migrate() == []  # applied once: no second back-fill
    assert review.queue(QueueFilter(agent=agent), int(time.time() * 1000))[1] == 2
    sink.client.command(f"DROP DATABASE {sink.database}")
