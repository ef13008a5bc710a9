"""The SOC dashboard: committed JSON is what build_dashboard.py generates, every PromQL parses and uses
only catalogue metrics, ClickHouse panels query real columns, datasource uids are the provisioned ones."""

from __future__ import annotations

import json
import re
import runpy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support import ROOT
from tests.support.promql import PROMETHEUS_NAMES, exposed_names, metric_names, promtool_check

GRAFANA = ROOT / "compose" / "grafana"
COMMITTED = GRAFANA / "dashboards" / "agentgov-soc.json"
pytest.importorskip("grafana_foundation_sdk", reason="dev dependency grafana-foundation-sdk not installed")
BUILD = runpy.run_path(str(GRAFANA / "build_dashboard.py"))
# Grafana's interval variables, replaced by a concrete duration so promtool can parse the expression.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# Columns the ClickHouse panels may use (the audit store's contract for dashboards).
CH_COLUMNS = {
    "assessments": {"event_id", "run_id", "agent_id", "action", "risk_score", "risk_level", "scored_at",
                    "occurred_at"},
    "findings": {"event_id", "run_id", "agent_id", "code", "severity", "category", "message", "occurred_at"},
}


def dashboard() -> dict[str, Any]:
    return json.loads(COMMITTED.read_text())


def targets(kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            if ds.get("type") == kind:
                yield panel["title"], target


def _concrete(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def test_committed_json_is_generated() -> None:
    assert COMMITTED.read_text() == BUILD["render"](), "run: .venv/bin/python compose/grafana/build_dashboard.py"


def test_required_panels() -> None:
    titles = {p["title"] for p in dashboard()["panels"]}
    assert {"Transitions by action and outcome", "Risk-level mix", "Findings by code", "Escalations by pattern",
            "Dead letters by reason", "Consumer lag", "Latency: event to scored / stored (p50, p99)",
            "Top risky agents", "Latest critical findings"} <= titles


def test_promql_parses() -> None:
    exprs = [_concrete(t["expr"]) for _, t in targets("prometheus")]
    assert len(exprs) >= 10
    out = promtool_check(exprs)
    assert out.returncode == 0, out.stdout + out.stderr


def _ids(value: object) -> str:
    return value if isinstance(value, str) else ""


@pytest.mark.parametrize(("title", "target"), list(targets("prometheus")), ids=_ids)
def test_promql_uses_catalogue_metrics(title: str, target: dict[str, Any]) -> None:
    unknown = metric_names(_concrete(target["expr"])) - exposed_names() - PROMETHEUS_NAMES
    assert not unknown, f"{title}: not in pipeline/metrics.py: {sorted(unknown)}"


@pytest.mark.parametrize(("title", "target"), list(targets("grafana-clickhouse-datasource")), ids=_ids)
def test_clickhouse_sql_uses_known_columns(title: str, target: dict[str, Any]) -> None:
    sql = target["rawSql"]
    tables = re.findall(r"\bFROM\s+agentgov\.(\w+)", sql)
    assert tables and set(tables) <= set(CH_COLUMNS), f"{title}: {tables}"
    allowed = set().union(*(CH_COLUMNS[t] for t in tables))
    # Identifiers that are neither SQL, functions, aliases nor string literals must be columns.
    body = re.sub(r"'[^']*'", "''", sql)
    aliases = set(re.findall(r"\bAS\s+(\w+)", body, re.I))
    words = set(re.findall(r"(?<![\w.$])([a-z_][a-z0-9_]*)\b(?!\s*\()", body))
    sql_words = {"as", "in", "and", "or", "desc", "asc", "by", "limit", "final", "where", "from", "select", "group",
                 "order", "agentgov", *CH_COLUMNS}
    unknown = words - allowed - aliases - sql_words
    assert not unknown, f"{title}: unknown columns {sorted(unknown)}"


def test_clickhouse_columns_exist_in_migrations() -> None:
    ddl = "\n".join(p.read_text() for p in sorted((ROOT / "pipeline" / "sinks" / "migrations").glob("*.sql")))
    for table, columns in CH_COLUMNS.items():
        m = re.search(rf"CREATE TABLE IF NOT EXISTS \$\{{db\}}\.{table}\b.*?\n\)", ddl, re.S)
        assert m, table
        for column in columns:
            assert re.search(rf"^\s+{column}\s", m.group(0), re.M), f"{table}.{column}"


def test_datasource_uids_are_provisioned() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yml").read_text())
    uids = {ds["uid"]: ds["type"] for ds in provisioned["datasources"]}
    used = {}
    for panel in dashboard()["panels"]:
        for ref in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
            if ref:
                used[ref["uid"]] = ref["type"]
    assert used.items() <= uids.items()
