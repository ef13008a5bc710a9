"""The Prometheus rules in compose/prometheus/rules: shape, metric names, runbooks, promtool."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import ROOT
from tests.support.promql import (
    PROMETHEUS_NAMES,
    RULES_DIR,
    all_rules,
    exposed_names,
    metric_names,
    promtool,
    recorded_names,
)

ALERTS = [r for r in all_rules() if "alert" in r]
SIGNALS = {"governance", "behaviour", "pipeline", "pipeline-capacity"}


def test_there_are_alerts_and_recording_rules() -> None:
    assert len(ALERTS) >= 10
    assert recorded_names()


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: r["alert"])
def test_alert_shape(rule: dict) -> None:
    assert "for" in rule, "state `for` explicitly, even 0m"
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["labels"]["signal"] in SIGNALS
    for key in ("summary", "description", "runbook_url"):
        assert rule["annotations"].get(key), key
    runbook = ROOT / rule["annotations"]["runbook_url"]
    assert runbook.is_file(), f"{rule['alert']}: runbook {runbook} missing"
    assert rule["alert"].startswith("Agentgov")


def test_every_runbook_is_linked() -> None:
    linked = {r["annotations"]["runbook_url"] for r in ALERTS}
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "runbooks").glob("*.md")}
    assert on_disk <= linked


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.get("alert") or r["record"])
def test_rules_use_only_catalogue_metrics(rule: dict) -> None:
    known = exposed_names() | recorded_names() | PROMETHEUS_NAMES
    unknown = metric_names(rule["expr"]) - known
    assert not unknown, f"not in pipeline/metrics.py: {sorted(unknown)}"


def test_escalation_page_names_agent_and_run() -> None:
    (rule,) = [r for r in ALERTS if r["alert"] == "AgentgovHiddenEscalation"]
    assert rule["labels"]["severity"] == "critical"
    assert "agentgov_escalation_chain_detected" in rule["expr"]
    assert "by (pattern, agent_id, run_id)" in rule["expr"]
    assert "agentgov trail {{ $labels.run_id }}" in rule["annotations"]["description"]


def test_pages_are_the_intended_ones() -> None:
    pages = {r["alert"] for r in ALERTS if r["labels"]["severity"] == "critical"}
    assert pages == {"AgentgovHiddenEscalation", "AgentgovPrivilegedGrantWithoutApproval",
                     "AgentgovPipelineDown", "AgentgovCorrelatorDown", "AgentgovStoreStalled"}


def test_promtool_check_rules() -> None:
    files = sorted(str(p) for p in RULES_DIR.glob("*.yml"))
    out = subprocess.run([promtool(), "check", "rules", *files], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_test_rules() -> None:
    tests = sorted(str(p) for p in (RULES_DIR / "tests").glob("*.yml"))
    assert tests
    out = subprocess.run([promtool(), "test", "rules", *tests], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
