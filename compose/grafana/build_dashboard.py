"""Generate the agentgov SOC dashboard with grafana-foundation-sdk.

    .venv/bin/python compose/grafana/build_dashboard.py            # rewrite dashboards/agentgov-soc.json
    .venv/bin/python compose/grafana/build_dashboard.py --check    # exit 1 if the committed JSON is stale

Prometheus panels use only metrics from pipeline/metrics.py (tests/unit/test_dashboard.py checks names and
PromQL syntax); ClickHouse panels query agentgov.assessments and agentgov.findings through the
grafana-clickhouse-datasource as the read-only agentgov_reader user. Datasource uids match
compose/grafana/provisioning/datasources/datasources.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards" / "agentgov-soc.json"
UID = "agentgov-soc"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="agentgov-prometheus")
CLICKHOUSE = DataSourceRef(type_val="grafana-clickhouse-datasource", uid="agentgov-clickhouse")


class ClickHouseQuery(cogvariants.Dataquery):
    """A grafana-clickhouse-datasource SQL query (the SDK ships no builder for this plugin)."""

    def __init__(self, sql: str, ref_id: str = "A", fmt: int = 1) -> None:
        self.sql = sql
        self.ref_id = ref_id
        self.fmt = fmt  # 1 = table, 0 = time series

    def to_json(self) -> dict[str, Any]:
        return {"datasource": CLICKHOUSE.to_json(), "editorType": "sql", "format": self.fmt,
                "queryType": "table" if self.fmt == 1 else "timeseries", "rawSql": self.sql,
                "refId": self.ref_id}


class ClickHouse(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, sql: str, ref_id: str = "A") -> None:
        self._query = ClickHouseQuery(" ".join(sql.split()), ref_id)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def prom(expr: str, legend: str = "", ref_id: str = "A", *, instant: bool = False) -> pb.Dataquery:
    q = pb.Dataquery().expr(expr).ref_id(ref_id).datasource(PROMETHEUS)
    if legend:
        q = q.legend_format(legend)
    if instant:
        q = q.instant().format(PromQueryFormat.TABLE)
    return q


def series(title: str, unit: str, *targets: pb.Dataquery, stacked: bool = False, bars: bool = False,
           description: str = "", span: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit)
             .height(8).span(span).fill_opacity(20 if stacked else 5)
             .legend(cb.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.RIGHT).calcs(["sum" if bars else "lastNotNull"])))
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS)
    for t in targets:
        panel = panel.with_target(t)
    return panel


def big_number(title: str, expr: str, unit: str, description: str, span: int = 6) -> stat.Panel:
    return (stat.Panel().title(title).description(description).datasource(PROMETHEUS).unit(unit)
            .height(4).span(span).with_target(prom(expr, instant=True))
            .graph_mode(common.BigValueGraphMode.NONE).color_mode(common.BigValueColorMode.BACKGROUND))


def build() -> dict[str, Any]:
    rate = "$__rate_interval"
    dash = (
        db.Dashboard("agentgov SOC").uid(UID).tags(["agentgov", "soc"]).refresh("30s").time("now-6h", "now")
        .timezone("utc").tooltip(DashboardCursorSync.CROSSHAIR).editable()
        .description("Governance of AI agents making IAM decisions: what they did, what was flagged, "
                     "and whether the pipeline is watching.")
        # -- what needs attention now
        .with_row(db.Row("Attention"))
        .with_panel(big_number("Escalation chains (15m)",
                               "count(max by (pattern, agent_id, run_id) (agentgov_escalation_chain_detected)"
                               " > time() - 900) or vector(0)",
                               "none", "Hidden-escalation chains detected in the last 15 minutes (each pages)."))
        .with_panel(big_number("Critical findings (1h)",
                               'sum(increase(agentgov_findings_total{severity="critical"}[1h])) or vector(0)',
                               "none", "Critical findings raised in the last hour, all codes."))
        .with_panel(big_number("Dead letters (1h)", "sum(increase(agentgov_dead_letters_total[1h])) or vector(0)",
                               "none", "Messages the scorers could not read, last hour."))
        .with_panel(big_number("Scorers up",
                               'sum(agentgov_process_up{role="scorer"}) or vector(0)', "none",
                               "Scorer replicas whose processing loop runs.", span=3))
        .with_panel(big_number("Writer up", 'sum(agentgov_process_up{role="writer"}) or vector(0)', "none",
                               "1 while the ClickHouse writer's loop runs.", span=3))
        .with_panel(
            table.Panel().title("Escalation chains, last 15 minutes").datasource(PROMETHEUS).height(7).span(24)
            .show_header(True)
            .description("One row per chain: look it up with `agentgov trail <run_id>`. Value is the detection time.")
            .unit("dateTimeAsIso")
            .with_target(prom("max by (pattern, agent_id, run_id) (agentgov_escalation_chain_detected)"
                              " > time() - 900", instant=True)))
        # -- governance signals
        .with_row(db.Row("Governance"))
        .with_panel(series("Findings by code", "short",
                           prom(f"sum by (code) (increase(agentgov_findings_total[{rate}]))", "{{code}}"),
                           bars=True, stacked=True, description="Findings raised per interval, by stable code."))
        .with_panel(series("Escalations by pattern", "short",
                           prom(f"sum by (pattern) (increase(agentgov_escalations_total[{rate}]))", "{{pattern}}"),
                           bars=True, stacked=True, description="Hidden-escalation chains (AG-ESC-*) detected."))
        .with_panel(series("Transitions by action and outcome", "ops",
                           prom(f"sum by (action, outcome) (rate(agentgov_transitions_total[{rate}]))",
                                "{{action}} {{outcome}}"),
                           stacked=True, description="Transitions scored per second."))
        .with_panel(series("Risk-level mix", "percentunit",
                           prom(f"sum by (risk_level) (rate(agentgov_assessments_total[{rate}]))"
                                f" / ignoring (risk_level) group_left () sum(rate(agentgov_assessments_total[{rate}]))",
                                "{{risk_level}}"),
                           stacked=True, description="Share of assessments at each risk level."))
        # -- the review workbench (agentgov review)
        .with_row(db.Row("Review"))
        .with_panel(series("Open findings by severity", "short",
                           prom("max without (instance) (agentgov_review_open_findings)", "{{severity}}"),
                           prom("max without (instance) (agentgov_review_sla_breaches)", "{{severity}} past SLA", "B"),
                           span=8, description="Review queue (medium and above, not excepted) and how many are past "
                                               "the policy's triage SLA."))
        .with_panel(series("Time to acknowledge / close (p50, p90)", "s",
                           prom("histogram_quantile(0.5, sum by (le) "
                                f"(rate(agentgov_review_time_to_acknowledge_seconds_bucket[{rate}])))", "ack p50"),
                           prom("histogram_quantile(0.9, sum by (le) "
                                f"(rate(agentgov_review_time_to_acknowledge_seconds_bucket[{rate}])))", "ack p90",
                                "B"),
                           prom("histogram_quantile(0.9, sum by (le) "
                                f"(rate(agentgov_review_time_to_close_seconds_bucket[{rate}])))", "close p90", "C"),
                           span=8, description="From a finding's event to the decision, across severities."))
        .with_panel(series("Risk exceptions", "short",
                           prom("max without (instance) (agentgov_review_exceptions)", "{{state}}"),
                           prom("max(agentgov_review_exceptions_expiring_7d)", "expiring within 7 days", "B"),
                           prom(f"sum(increase(agentgov_findings_excepted_total[{rate}]))", "findings excepted", "C"),
                           span=8, description="Exceptions by state; excepted findings are stored but never page."))
        # -- pipeline health
        .with_row(db.Row("Pipeline health"))
        .with_panel(series("Dead letters by reason", "ops",
                           prom(f"sum by (reason) (rate(agentgov_dead_letters_total[{rate}]))", "{{reason}}"),
                           span=8))
        .with_panel(series("Consumer lag", "short",
                           prom("sum by (role) (agentgov_consumer_lag_messages)", "{{role}}"), span=8))
        .with_panel(series("Store write errors", "ops",
                           prom(f"sum by (table, kind) (rate(agentgov_sink_errors_total[{rate}]))",
                                "{{table}} {{kind}}"), span=8))
        .with_panel(series("Latency: event to scored / stored (p50, p99)", "s",
                           prom("histogram_quantile(0.5, sum by (le) "
                                f"(rate(agentgov_event_to_scored_latency_seconds_bucket[{rate}])))", "scored p50"),
                           prom("histogram_quantile(0.99, sum by (le) "
                                f"(rate(agentgov_event_to_scored_latency_seconds_bucket[{rate}])))", "scored p99",
                                "B"),
                           prom("histogram_quantile(0.5, sum by (le) "
                                f"(rate(agentgov_event_to_stored_latency_seconds_bucket[{rate}])))", "stored p50",
                                "C"),
                           prom("histogram_quantile(0.99, sum by (le) "
                                f"(rate(agentgov_event_to_stored_latency_seconds_bucket[{rate}])))", "stored p99",
                                "D"),
                           span=12))
        .with_panel(series("Last store write age / baseline age", "s",
                           prom("time() - max(agentgov_last_stored_timestamp_seconds)", "since last store write"),
                           prom("max(agentgov_baseline_age_seconds)", "baseline age", "B"), span=12))
        .with_panel(series("State rebuilds (p99, 6h; keep under AGENTGOV_MAX_POLL_INTERVAL_SECONDS)", "s",
                           prom("histogram_quantile(0.99, sum by (le, role) "
                                "(rate(agentgov_state_rebuild_duration_seconds_bucket[6h])))", "{{role}}"),
                           span=12))
        # -- the audit store
        .with_row(db.Row("Audit store (ClickHouse)"))
        .with_panel(
            table.Panel().title("Top risky agents").datasource(CLICKHOUSE).height(10).span(12).show_header(True)
            .description("Agents ranked by high/critical assessments in the dashboard's time range.")
            .with_target(ClickHouse("""
                SELECT agent_id,
                       countIf(risk_level IN ('high', 'critical')) AS high_or_critical,
                       max(risk_score) AS max_score,
                       round(avg(risk_score), 1) AS avg_score,
                       count() AS assessments
                FROM agentgov.assessments FINAL
                WHERE $__timeFilter(occurred_at)
                GROUP BY agent_id
                ORDER BY high_or_critical DESC, max_score DESC
                LIMIT 20""")))
        .with_panel(
            table.Panel().title("Latest critical findings").datasource(CLICKHOUSE).height(10).span(12).show_header(True)
            .description("Newest critical findings; `agentgov trail <run_id>` reconstructs the run.")
            .with_target(ClickHouse("""
                SELECT occurred_at, code, agent_id, run_id, message
                FROM agentgov.findings FINAL
                WHERE severity = 'critical' AND $__timeFilter(occurred_at)
                ORDER BY occurred_at DESC
                LIMIT 50""")))
    )
    return json.loads(JSONEncoder().encode(dash.build()))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the agentgov SOC dashboard JSON")
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
