"""The audit store's keys on ~1M rows in the embedded engine: the auditors' reads touch few granules.

Rows go in through ``ingest`` (the materialized views fan out as for the writer's batches), generated in
SQL by ``bench/clickhouse_keys.py``, the script behind the figures in docs/clickhouse.md.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench import clickhouse_keys as keys
from pipeline import audit
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded

pytestmark = pytest.mark.integration

ROWS = 1_000_000




@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[tuple[ClickHouseSink, dict[str, Any]]]:
    sink = ClickHouseSink(open_embedded(chdb_path), f"k{uuid.uuid4().hex[:10]}",
                          ttl_days=100_000)
    sink.migrate()
    keys.fill(sink, ROWS)
    for table in ("transitions", "assessments", "findings"):
        sink.client.command(f"OPTIMIZE TABLE {sink.database}.{table} FINAL")
    yield sink, keys.sample(sink)
    sink.client.command(f"DROP DATABASE IF EXISTS {sink.database}")
    sink.close()


def test_trail_reads_a_small_fraction_of_granules(store: tuple[ClickHouseSink, dict[str, Any]]) -> None:
    sink, params = store
    assert sink.count("transitions") == ROWS
    for sql in (audit.TRAIL_SQL, audit.FINDINGS_SQL):
        kept, total, text = keys.granules(sink, sql, params)
        assert total > 100 if "transitions" in text else total > 0
        # a run may straddle a daily partition or a part boundary: a few granules, never a scan
        assert kept <= max(3, total // 25), f"trail kept {kept}/{total} granules:\n{text}"
    before = keys.selected(sink)["SelectedRows"]
    steps = audit.trail(sink, params["run"])
    read = keys.selected(sink)["SelectedRows"] - before
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    # the trail touches transitions, assessments and findings: at most a few granules (8,192 rows) of each,
    # the same bound as the EXPLAIN check above, never a scan (which would read ROWS of each)
    assert read <= 3 * 3 * 8192, f"trail read {read:,} rows of {ROWS:,}"


@pytest.mark.parametrize("name", ["agent, one day (assessments)", "target identity (transitions)",
                                  "time, one day, score >= 80 (assessments)"])
def test_agent_target_and_time_reads_are_pruned(store: tuple[ClickHouseSink, dict[str, Any]], name: str) -> None:
    sink, params = store
    kept, total, text = keys.granules(sink, keys.QUERIES[name], params)
    assert kept <= total // 8, f"{name}: kept {kept}/{total} granules:\n{text}"


def test_export_by_agent_and_time_uses_the_keys(store: tuple[ClickHouseSink, dict[str, Any]]) -> None:
    sink, params = store
    since, until = datetime(2026, 1, 5), datetime(2026, 1, 6)
    before = keys.selected(sink)["SelectedRows"]
    rows = list(audit.export(sink, since=since, until=until, agent_id=params["agent"]))
    read = keys.selected(sink)["SelectedRows"] - before
    assert rows and all(r["agent_id"] == params["agent"] for r in rows)
    assert read < ROWS * 0.05, f"export read {read:,} rows"
