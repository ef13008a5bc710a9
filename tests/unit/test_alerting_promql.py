"""Tests of the PromQL helpers in :mod:`tests.support.promql`."""

from __future__ import annotations

import pytest

from tests.support.promql import exposed_names, metric_names, promtool_check


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("sum by (code) (rate(agentgov_findings_total{code=\"AG-AUTH-001\"}[5m]))", {"agentgov_findings_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))", {"x_bucket"}),
        ("a unless a offset 10m", {"a"}),
        ("time() - max(agentgov_last_stored_timestamp_seconds) > 6e2", {"agentgov_last_stored_timestamp_seconds"}),
        ("agentgov:x:rate5m > 0 and on () absent(up{job=\"w\"})", {"agentgov:x:rate5m", "up"}),
        ("count by (job) (up) unless on (job) count by (job) (b == 1)", {"up", "b"}),
    ],
)
def test_metric_names(expr: str, want: set[str]) -> None:
    assert metric_names(expr) == want


def test_exposed_names_carry_exposition_suffixes() -> None:
    names = exposed_names()
    assert "agentgov_findings_total" in names
    assert "agentgov_event_to_stored_latency_seconds_bucket" in names
    assert "agentgov_escalation_chain_detected" in names
    assert "agentgov_build_info" in names
    assert "agentgov_findings" not in names


def test_promtool_check_rejects_bad_promql() -> None:
    assert promtool_check(["sum(rate(up[5m]))"]).returncode == 0
    assert promtool_check(["sum(rate(up[5m])"]).returncode != 0
