"""Retention counts from when the store received a row, not from the agent's ``occurred_at`` (migration
``retention_from_storage``), on the embedded store.

An event the scorer accepted (``occurred_at`` within ``max_event_age_days``, at most ``retention_days``)
used to be stored and then dropped by the next TTL merge once ``occurred_at + retention_days`` passed:
its findings and its ``event_ids`` row gone, its id free to be stored again as a "first copy". Rows go in
the way the writer sends them (scored, encoded, one Avro container through ``insert_assessments``; a
later copy through ``insert_duplicates``; a cross-run finding with the correlation store's columns); the
TTL is then forced (``MATERIALIZE TTL`` and ``OPTIMIZE ... FINAL``, what a background TTL merge does).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import pipeline.sinks.clickhouse as ch
from pipeline import audit
from pipeline.assessment import AssessmentEncoder
from pipeline.correlations import COLUMNS, TABLE
from pipeline.drafts import draft
from pipeline.events import check_values
from pipeline.limits import DAY_MS, Limits
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.policy import load_policy
from pipeline.serde import SOE_HEADER, Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded
from pipeline.sinks.ocf import ContainerBuilder
from tests.support.helpers import FakeProducer

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
RETENTION = Settings().retention_days
MIGRATION = "retention_from_storage"
# Every audit table whose rows expire, and the table an event's row of it is found by.
EXPIRING = ("transitions", "assessments", "findings", "event_ids", "cross_run_findings")
SCHEMAS = SchemaSet.load()
POLICY = load_policy()
SERDE = Serde(SCHEMAS)
ENCODER = AssessmentEncoder(SCHEMAS, Serde(SCHEMAS, record=ASSESSMENT), "t", POLICY)
PUBLISHER = TransitionPublisher(Settings(), serde=SERDE, producer=FakeProducer())  # type: ignore[arg-type]
CONTAINER = ContainerBuilder(SCHEMAS.assessment.raw)


@pytest.fixture
def sink(chdb_path: Path) -> Iterator[ClickHouseSink]:
    store = ClickHouseSink(open_embedded(chdb_path), f"r{uuid.uuid4().hex[:10]}",
                           ttl_days=RETENTION)
    yield store
    store.client.command(f"DROP DATABASE IF EXISTS {store.database}")


def privileged_grant(run_id: str, occurred_ms: int) -> dict[str, Any]:
    """A model-authorised tier-3 role grant with no trigger reference, stamped ``occurred_ms``: several findings."""
    doc = draft(run_id=run_id, action="assign_role", occurred_at=datetime.fromtimestamp(occurred_ms / 1000, tz=UTC),
                **{"resource.resource_id": "GlobalAdmin", "resource.privilege_tier": 3,
                   "decision.authority": "model", "trigger.ref": None})
    return SERDE.decode(SERDE.encode(PUBLISHER.complete(doc))).record


def assessment(rec: dict[str, Any], offset: int, scored_ms: int) -> bytes:
    """What a scorer whose clock reads ``scored_ms`` publishes for ``rec``, after the scorer's checks."""
    check_values(rec, now_ms=scored_ms, limits=Limits.from_settings(Settings()))  # raises if the scorer refuses
    decoded = SERDE.decode(SERDE.encode(rec))
    scored = score(decoded.record, ScoringContext(policy=POLICY))
    assert scored.findings, "the event should raise findings"
    return ENCODER.encode(decoded, scored, 0, offset, scored_ms)[SOE_HEADER:]


def cross_run_finding(rec: dict[str, Any]) -> list[Any]:
    when = datetime.fromtimestamp(rec["occurred_at"] / 1000, tz=UTC)
    row = {"finding_id": f"f-{rec['event_id']}", "code": "AG-XRN-001", "severity": "critical",
           "category": "escalation", "pattern": "tier_stepping", "message": "tier 1 -> 2 -> 3 over 3 runs",
           "entity_key": "target:u-1", "event_id": rec["event_id"], "run_id": rec["run_id"],
           "agent_id": rec["agent"]["agent_id"], "occurred_at": when, "related_event_ids": [rec["event_id"]],
           "related_run_ids": [rec["run_id"]], "related_partitions": [0], "refs": [], "detected_at": when,
           "correlator_version": "1", "governance_policy_version": "p1"}
    return [row[c] for c in COLUMNS]


def store(sink: ClickHouseSink, rec: dict[str, Any], offset: int, scored_ms: int) -> None:
    sink.insert_assessments(CONTAINER.build([assessment(rec, offset, scored_ms)]), token=f"batch-{offset}")
    sink.client.insert(f"{sink.database}.{TABLE}", [cross_run_finding(rec)], column_names=list(COLUMNS),
                       settings={"insert_deduplication_token": f"xrn-{offset}", "insert_deduplicate": 1})


def force_ttl(sink: ClickHouseSink) -> None:
    for table in (*EXPIRING, "duplicates"):
        sink.client.command(f"ALTER TABLE {sink.database}.{table} MATERIALIZE TTL SETTINGS mutations_sync = 2")
        sink.client.command(f"OPTIMIZE TABLE {sink.database}.{table} FINAL")


def rows_of(sink: ClickHouseSink, event_id: str) -> dict[str, int]:
    """Rows of ``event_id`` per table (``duplicates`` is append-only, read without FINAL)."""
    return {table: int(sink.client.query(
        f"SELECT count() FROM {sink.database}.{table} {'' if table == 'duplicates' else 'FINAL'} "
        "WHERE event_id = {e:String}", parameters={"e": event_id}).result_rows[0][0])
        for table in (*EXPIRING, "duplicates")}


def test_an_event_the_scorer_accepted_outlives_the_next_ttl_merge(sink: ClickHouseSink) -> None:
    """A scorer accepts an event stamped an hour inside retention; the writer, two hours behind, stores it
    when occurred_at + retention_days is already an hour past. It stays, with every finding, its first-copy
    registry entry and its kept-apart later copy; the same id sent again is still a later copy."""
    sink.migrate()
    now = int(time.time() * 1000)
    scored_ms = now - 2 * HOUR_MS
    rec = privileged_grant("run-backdated", scored_ms - RETENTION * DAY_MS + HOUR_MS)
    store(sink, rec, 1, scored_ms)
    findings = rows_of(sink, rec["event_id"])["findings"]
    sink.insert_duplicates(CONTAINER.build([assessment(rec, 2, scored_ms)]), token="later-copy")
    force_ttl(sink)
    assert rows_of(sink, rec["event_id"]) == {"transitions": 1, "assessments": 1, "findings": findings,
                                              "event_ids": 1, "cross_run_findings": 1, "duplicates": 1}
    assert findings >= 3  # the scorer's findings and the cross-run one
    assert set(sink.stored_sources([rec["event_id"]])) == {rec["event_id"]}  # the writer still sees it stored
    stored = sink.query("SELECT stored_at, occurred_at FROM {db}.transitions FINAL")[0]
    assert stored["stored_at"].timestamp() * 1000 >= now - 60_000  # the store's time, not the agent's
    # The export shows both: an auditor sees the event was stamped a retention period before it was stored.
    [doc] = audit.export(sink, since=datetime.fromtimestamp(0, UTC), until=datetime.now(UTC))
    assert doc["stored_at"].timestamp() * 1000 >= now - 60_000
    assert (doc["stored_at"] - doc["occurred_at"]).days >= RETENTION - 1


def test_a_row_stored_longer_ago_than_retention_expires(sink: ClickHouseSink) -> None:
    """The other side: an event stored (stored_at set to) 800 days ago, stamped 810 days ago, is dropped
    from every audit table at the TTL merge; an event stamped as long ago but stored now stays."""
    sink.migrate()
    now = int(time.time() * 1000)
    gone = privileged_grant("run-gone", now - 810 * DAY_MS)
    kept = privileged_grant("run-kept", now - 810 * DAY_MS + HOUR_MS)
    store(sink, gone, 1, now - 800 * DAY_MS)
    store(sink, kept, 2, now - 800 * DAY_MS)  # scored long ago, stored only now (say, restored from a backup)
    for table in EXPIRING:
        sink.client.command(f"ALTER TABLE {sink.database}.{table} UPDATE stored_at = now64(3) - INTERVAL 800 DAY "
                            f"WHERE event_id = '{gone['event_id']}' SETTINGS mutations_sync = 2")
    force_ttl(sink)
    assert rows_of(sink, gone["event_id"]) == dict.fromkeys((*EXPIRING, "duplicates"), 0)
    left = rows_of(sink, kept["event_id"])
    assert all(left[t] > 0 for t in EXPIRING), left


def test_an_upgraded_store_keeps_the_retention_of_rows_stored_before_it(
        sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows stored before the migration have no recorded storage time: they get stored_at 1970-01-01 and so
    keep expiring at occurred_at + retention_days (the upgrade neither extends nor shortens them); rows
    stored after it count from their storage. Applying the migration's statements again (a partial failure,
    retried) leaves every stored_at as it was."""
    everything = ch.migrations()
    [(version, _, sql)] = [m for m in everything if m[1] == MIGRATION]
    monkeypatch.setattr(ch, "migrations", lambda: [m for m in everything if m[1] != MIGRATION])
    assert version not in sink.migrate()
    now = int(time.time() * 1000)
    store(sink, privileged_grant("run-before", now - 390 * DAY_MS), 1, now)
    monkeypatch.setattr(ch, "migrations", lambda: everything)
    assert sink.migrate() == [version]
    store(sink, privileged_grant("run-after", now - 390 * DAY_MS), 2, now)
    for table in EXPIRING:
        start = {r["run_id"]: (r["stored_at"], r["counts_from"]) for r in sink.query(
            "SELECT run_id, stored_at, greatest(occurred_at, stored_at) = occurred_at AS counts_from "
            f"FROM {{db}}.{table}")}
        assert start["run-before"] == (datetime(1970, 1, 1), True), table
        assert start["run-after"][0].timestamp() * 1000 >= now - 60_000 and not start["run-after"][1], table
    exported = {d["run_id"]: d["stored_at"] for d in audit.export(
        sink, since=datetime.fromtimestamp(0, UTC), until=datetime.now(UTC))}
    assert exported["run-before"] is None  # not recorded, and not shown as 1970
    assert exported["run-after"].timestamp() * 1000 >= now - 60_000
    stamps = sink.query("SELECT run_id, stored_at FROM {db}.transitions ORDER BY run_id")
    for statement in ch.render(sql, sink.database, RETENTION):
        sink.client.command(statement)
    assert sink.query("SELECT run_id, stored_at FROM {db}.transitions ORDER BY run_id") == stamps
    ttl = sink.query("SELECT name, engine_full FROM system.tables WHERE database = {d:String}",
                     {"d": sink.database})
    assert all("greatest(occurred_at, stored_at)" in r["engine_full"] for r in ttl
               if r["name"] in (*EXPIRING, "duplicates")), ttl
