"""Migrations render to valid single-node and cluster DDL with the same logical schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from pipeline.sinks.clickhouse import SHARDING_KEY, migrations, render, template_vars

CLUSTER = "agentgov_cluster"
TABLES = ("ingest", "transitions", "assessments", "findings")


def statements(cluster: str | None) -> list[str]:
    return [s for _, _, sql in migrations() for s in render(sql, "agentgov", 400, cluster)]


def columns(statement: str) -> list[str]:
    """Column definitions of a CREATE TABLE (top-level lines of its column list)."""
    body = statement[statement.index("(") + 1:statement.index("\nENGINE")].rsplit(")", 1)[0]
    depth, current, out = 0, "", []
    for ch in body:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(" ".join(current.split()))
            current = ""
        else:
            current += ch
    out.append(" ".join(current.split()))
    return [c for c in out if c and not c.startswith("INDEX ")]


def create_table(stmts: list[str], name: str) -> str:
    found = [s for s in stmts if re.match(rf"CREATE TABLE IF NOT EXISTS agentgov\.{name}\b", s)]
    assert len(found) == 1, name
    return found[0]


def test_single_node_uses_plain_engines_and_no_cluster() -> None:
    stmts = statements(None)
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s or "_local" in s for s in stmts)
    for table in TABLES[1:]:
        ddl = create_table(stmts, table)
        assert "ReplacingMergeTree" in ddl and "TTL toDateTime(occurred_at) + INTERVAL 400 DAY" in ddl
        assert "PARTITION BY toDate(occurred_at)" in ddl and "ttl_only_drop_parts = 1" in ddl


def test_cluster_variant_has_replicated_locals_and_distributed_twins_with_the_same_columns() -> None:
    single, cluster = statements(None), statements(CLUSTER)
    assert all(f"ON CLUSTER {CLUSTER}" in s for s in cluster)
    for table in TABLES:
        local = create_table(cluster, f"{table}_local")
        twin = create_table(cluster, table)
        assert twin == (f"CREATE TABLE IF NOT EXISTS agentgov.{table} ON CLUSTER {CLUSTER} AS agentgov.{table}_local "
                        f"ENGINE = Distributed({CLUSTER}, agentgov, {table}_local, {SHARDING_KEY})")
        assert cluster.index(local) < cluster.index(twin)  # AS needs the local table first
        assert columns(local) == columns(create_table(single, table)), table
        if table != "ingest":
            assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}'" in local
            assert "replicated_deduplication_window" in local
    rollup = create_table(cluster, "agent_hourly_local")
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}')" in rollup
    assert create_table(cluster, "agent_hourly").endswith("agent_hourly_local, cityHash64(agent_id))")
    assert columns(rollup) == columns(create_table(single, "agent_hourly"))
    views = [s for s in cluster if s.startswith("CREATE MATERIALIZED VIEW")]
    # access_changes (003), event_ids and duplicates (004); mv_findings is recreated by 005 (findings carry
    # the exception that covered them), mv_event_ids by 008 (event_ids keep the source's content digest),
    # mv_cross_run_findings by 009 (a cross-run finding keyed by its finding_id in findings).
    assert sorted(re.search(r"VIEW IF NOT EXISTS agentgov\.(\w+)", v)[1] for v in views) == [
        "mv_access_changes", "mv_agent_hourly", "mv_assessments", "mv_cross_run_findings", "mv_cross_run_findings",
        "mv_duplicates", "mv_event_ids", "mv_event_ids", "mv_findings", "mv_findings", "mv_transitions"]
    assert re.search(r"\bfinding_id\s+FROM agentgov\.cross_run_findings_local",
                     [v for v in views if "mv_cross_run_findings" in v][-1])
    assert "f.exception_id AS exception_id" in [v for v in views if "mv_findings" in v][-1]
    assert "source_digest" in [v for v in views if "mv_event_ids" in v][-1]
    for table, key in (("decisions", "subject_id"), ("exceptions", "exception_id"), ("access_changes", "target_id")):
        assert create_table(cluster, table).endswith(f"{table}_local, cityHash64({key}))")
    assert columns(create_table(cluster, "cross_run_findings_local")) == columns(
        create_table(single, "cross_run_findings"))
    for view in views:  # the fan-out runs on each shard: local source, local target
        assert re.search(r"TO agentgov\.\w+_local AS", view)
        assert re.search(r"FROM agentgov\.(ingest|ingest_duplicates|cross_run_findings)_local\b", view)


def test_every_column_of_the_sharding_key_exists_in_every_table() -> None:
    for table in TABLES:
        assert any(c.startswith("run_id ") for c in columns(create_table(statements(None), table)))


def test_template_placeholders_are_all_bound() -> None:
    for cluster in (None, CLUSTER):
        vars_ = template_vars("agentgov", 30, cluster)
        for _, _, sql in migrations():
            names = set(re.findall(r"\$\{(\w+)\}", sql))
            assert names <= set(vars_), names - set(vars_)


PARSE = """
import json, sys, chdb
bad = []
for s in json.load(sys.stdin):
    try:
        chdb.query("EXPLAIN AST " + s, "CSV")
    except Exception as exc:
        bad.append([s[:120], str(exc)[:300]])
print(json.dumps(bad))
"""


@pytest.mark.parametrize("cluster", [None, CLUSTER])
def test_every_statement_parses_on_the_embedded_engine(cluster: str | None) -> None:
    """chdb parses (EXPLAIN AST) every statement; in a subprocess, as chdb serves one path per process."""
    pytest.importorskip("chdb")
    out = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps(statements(cluster)), text=True,
                         capture_output=True, timeout=120, check=True)
    assert json.loads(out.stdout) == []


def test_migration_versions_are_unique() -> None:
    """Two files with one version number (say, after a merge of two branches) would both record it, and a
    store that applied one would never apply the other: renumber the later one."""
    versions = [version for version, _, _ in migrations()]
    assert len(versions) == len(set(versions)), versions


# Tables whose TTL may count from a time in the row: id_probe (the writer's lookup rows, an hour) and
# agent_hourly (a rollup read only for the baseline window before now, never as evidence).
TTL_OF_ITS_OWN = {"id_probe", "agent_hourly"}


def test_every_audit_table_counts_retention_from_when_the_store_received_a_row() -> None:
    """occurred_at is the agent's claim: a TTL on it alone drops an event the scorer accepted (stamped just
    inside max_event_age_days) at the next merge. After all migrations, every table whose rows expire counts
    from greatest(occurred_at, stored_at), and event_ids (the first-copy registry) outlives the rows it
    protects."""
    final: dict[str, str] = {}
    for s in statements(None):
        m = (re.match(r"CREATE TABLE IF NOT EXISTS agentgov\.(\w+)\b.*\nTTL (.+?)(?:\nSETTINGS|$)", s, re.S)
             or re.match(r"ALTER TABLE agentgov\.(\w+)\s.*\bMODIFY TTL (.+?)(?:\s+SETTINGS|$)", s, re.S))
        if m:
            final[m[1]] = " ".join(m[2].split())
    assert {"transitions", "assessments", "findings", "event_ids", "cross_run_findings", "duplicates"} <= set(final)
    for table, ttl in final.items():
        if table not in TTL_OF_ITS_OWN:
            assert ttl.startswith("toDateTime(greatest(occurred_at, stored_at)) + INTERVAL 400 DAY"), (table, ttl)
    assert final["event_ids"].endswith("+ INTERVAL 1 DAY")
    added = {m[1] for s in statements(None)
             if (m := re.match(r"ALTER TABLE agentgov\.(\w+) .*ADD COLUMN IF NOT EXISTS stored_at\b", s, re.S))}
    assert added == set(final) - TTL_OF_ITS_OWN - {"duplicates"}  # duplicates had stored_at from 004
