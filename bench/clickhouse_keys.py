"""Measure the audit store's keys on the embedded engine: ``python -m bench.clickhouse_keys [rows]``.

Fills a fresh database through the real ingest path (``INSERT INTO ingest SELECT ... FROM numbers(N)``,
so the materialized views fan out exactly as for the writer's Avro batches), then runs the auditors'
queries and prints, for each, the granules the indexes kept (``EXPLAIN indexes = 1``), the rows read
and the best-of-3 wall time. The numbers in docs/clickhouse.md come from this script.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from typing import Any

from pipeline.audit import AUDIT_SETTINGS
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded

AGENTS = 2000
TARGETS = 200_000
DAYS = 14

# One row per event. Runs have 4 steps; run ids, agents and targets are hashes, so nothing correlates
# with insertion order by accident. Agents are skewed (agent-0 runs about 8% of all runs), 3% of events
# carry one finding. Event times spread evenly over DAYS days.
FILL_SQL = """
INSERT INTO {db}.ingest
SELECT event_id, run_id, agent_id, action, risk_score, risk_level, findings, occurred_at AS scored_at,
       '0.1.0', '1', 'sha', toInt32(run % 6), toInt64(n),
       tuple(event_id, occurred_at, 'jml-provisioning', '3', run_id, toInt32(step), concat('s', toString(step)),
             concat('s', toString(step + 1)), tuple(agent_id, '1.4.2', 'svc-jml', 'gpt-iam'),
             tuple('joiner', concat('HR-', toString(run))), action, tuple(target_id, 'human', 'active'),
             tuple(system, 'res-1', NULL, toInt32(step)), [tuple('department', 'hr')],
             tuple('granted', 'policy_engine', 'model', NULL, NULL), tuple('iam-policy', '7', NULL),
             tuple(hex(cityHash64(n, 'h')), NULL, NULL, NULL), map('demo.scenario', 'bench'), NULL),
       '' AS source_digest
FROM (
    SELECT number AS n, intDiv(number, 4) AS run, number % 4 AS step,
           toString(generateUUIDv4(number)) AS event_id,
           concat('run-', hex(cityHash64(run))) AS run_id,
           concat('agent-', toString(toUInt32(pow((cityHash64(run, 'a') % 1000000) / 1e6, 3) * {agents}))) AS agent_id,
           concat('u', leftPad(toString(cityHash64(run, 't') % {targets}), 6, '0')) AS target_id,
           ['create_account', 'add_group_member', 'grant_entitlement', 'assign_role'][step + 1] AS action,
           ['entra-id', 'entra-id', 'salesforce', 'aws'][step + 1] AS system,
           cityHash64(number, 'f') % 100 < 3 AS flagged,
           if(flagged, 90, 0) AS risk_score, if(flagged, 'critical', 'none') AS risk_level,
           if(flagged, [tuple('AG-AUTH-001', 'critical', 'risk', 'privileged grant without approval',
                              ['resource.privilege_tier'], ['OWASP-ASI03'], [], NULL, NULL)],
              []) AS findings,
           toDateTime64('2026-01-01 00:00:00', 3, 'UTC')
               + toIntervalMillisecond(intDiv(run * {span_ms}, {runs}) + step * 1500) AS occurred_at
    FROM numbers({rows})
)
"""


def fill(sink: ClickHouseSink, rows: int, chunk: int = 500_000) -> float:
    """Insert ``rows`` synthetic events through ``ingest``; returns rows/s."""
    t0 = time.perf_counter()
    runs = max(1, rows // 4)
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        sql = FILL_SQL.format(db=sink.database, agents=AGENTS, targets=TARGETS, span_ms=DAYS * 86_400_000,
                              runs=runs, rows=f"{start}, {n}")
        sink.client.command(sql, settings={"max_insert_threads": 2})
    return rows / (time.perf_counter() - t0)


def granules(sink: ClickHouseSink, sql: str, params: dict[str, Any]) -> tuple[int, int, str]:
    """(granules kept, granules in the table, the EXPLAIN text) of the first table a query reads."""
    text = "\n".join(r[0] for r in sink.client.query("EXPLAIN indexes = 1 " + sql.replace("{db}", sink.database),
                                                     parameters=params, settings=AUDIT_SETTINGS).result_rows)
    # The last "Granules: a/b" of the first ReadFromMergeTree is what survives every index.
    first = text.split("ReadFromMergeTree")[1] if "ReadFromMergeTree" in text else text
    found = re.findall(r"Granules: (\d+)/(\d+)", first)
    kept, total = (int(found[-1][0]), int(found[0][1])) if found else (0, 0)
    return kept, total, text


def selected(sink: ClickHouseSink) -> dict[str, int]:
    """The engine's cumulative SelectedRows/SelectedMarks counters (a delta around a query is what it read)."""
    rows = sink.client.query("SELECT event, value FROM system.events WHERE event IN "
                             "('SelectedRows', 'SelectedMarks')").result_rows
    return {"SelectedRows": 0, "SelectedMarks": 0} | {k: int(v) for k, v in rows}


def timed(sink: ClickHouseSink, sql: str, params: dict[str, Any], repeat: int = 3) -> tuple[float, int, int]:
    """(best wall seconds, rows read from MergeTree tables, result rows)."""
    best, read, n = float("inf"), 0, 0
    for _ in range(repeat):
        before = selected(sink)["SelectedRows"]
        t0 = time.perf_counter()
        result = sink.client.query(sql.replace("{db}", sink.database), parameters=params,
                                   settings={"use_query_condition_cache": 0, **AUDIT_SETTINGS})
        best = min(best, time.perf_counter() - t0)
        read, n = selected(sink)["SelectedRows"] - before, len(result.result_rows)
    return best, read, n


def sample(sink: ClickHouseSink) -> dict[str, Any]:
    """A run, a mid-sized agent, a target and a one-day window that exist in the data."""
    run, target = sink.client.query(f"SELECT run_id, target_id FROM {sink.database}.transitions "
                                    "WHERE step = 3 LIMIT 1 OFFSET 1234").result_rows[0]
    agent = sink.client.query(f"SELECT agent_id FROM {sink.database}.transitions GROUP BY agent_id "
                              "ORDER BY count() DESC LIMIT 1 OFFSET 50").result_rows[0][0]
    return {"run": run, "agent": agent, "target": target,
            "since": "2026-01-05 00:00:00", "until": "2026-01-06 00:00:00"}


QUERIES: dict[str, str] = {
    "trail (transitions by run)": "SELECT * FROM {db}.transitions FINAL WHERE run_id = {run:String} ORDER BY step",
    "trail findings (findings by run)": "SELECT * FROM {db}.findings FINAL WHERE run_id = {run:String}",
    "agent, one day (assessments)": "SELECT * FROM {db}.assessments FINAL WHERE agent_id = {agent:String} "
                                    "AND occurred_at >= {since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)}",
    "agent, all time (transitions count by action)": "SELECT action, count() FROM {db}.transitions FINAL "
                                                     "WHERE agent_id = {agent:String} GROUP BY action",
    "target identity (transitions)": "SELECT * FROM {db}.transitions FINAL WHERE target_id = {target:String}",
    "time, one day, score >= 80 (assessments)": "SELECT * FROM {db}.assessments FINAL WHERE occurred_at >= "
                                                "{since:DateTime64(3)} AND occurred_at < {until:DateTime64(3)} "
                                                "AND risk_score >= 80",
    "findings by code, one day (dashboard)": "SELECT agent_id, count() FROM {db}.findings FINAL WHERE code = "
                                             "'AG-AUTH-001' AND occurred_at >= {since:DateTime64(3)} AND "
                                             "occurred_at < {until:DateTime64(3)} GROUP BY agent_id",
}


def main(rows: int = 1_000_000, path: str | None = None) -> None:
    path = path or tempfile.mkdtemp(prefix="agentgov-keys-")
    sink = ClickHouseSink(open_embedded(path), "keys", ttl_days=100_000)
    sink.client.command("DROP DATABASE IF EXISTS keys")
    sink.migrate()
    rate = fill(sink, rows)
    sink.client.command("OPTIMIZE TABLE keys.transitions FINAL")  # steady state: merged parts
    sink.client.command("OPTIMIZE TABLE keys.assessments FINAL")
    sink.client.command("OPTIMIZE TABLE keys.findings FINAL")
    print(f"rows {rows:,}  fill {rate:,.0f} rows/s through ingest + 3 MVs")
    params = sample(sink)
    print(f"params {params}")
    print(f"{'query':48} {'granules':>14} {'rows read':>10} {'result':>7} {'best ms':>8}")
    for name, sql in QUERIES.items():
        kept, total, _ = granules(sink, sql, params)
        best, read, n = timed(sink, sql, params)
        print(f"{name:48} {kept:>6}/{total:<7} {read:>10,} {n:>7} {best * 1000:>8.1f}")
    if "-v" in sys.argv:
        for name, sql in QUERIES.items():
            print(f"\n-- {name}\n{granules(sink, sql, params)[2]}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    main(int(args[0]) if args else 1_000_000, args[1] if len(args) > 1 else None)
