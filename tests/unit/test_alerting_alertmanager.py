"""compose/alertmanager: routing, grouping, inhibition, and the test renderer (render.py)."""

from __future__ import annotations

import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ROOT
from tests.support.promql import all_rules

AM_DIR = ROOT / "compose" / "alertmanager"
render = runpy.run_path(str(AM_DIR / "render.py"))["render"]


def amtool() -> str:
    exe = shutil.which("amtool")
    if exe is None:
        pytest.skip("amtool not installed (ci/system-deps.sh installs it)")
    return exe


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(render("http://127.0.0.1:9/pager", "http://127.0.0.1:9/ticket", fast=True)))
    return path


def _committed() -> dict[str, Any]:
    return yaml.safe_load((AM_DIR / "alertmanager.yml").read_text())


def test_render_points_receivers_at_local_urls() -> None:
    config = render("http://127.0.0.1:9/p", "http://127.0.0.1:9/t", fast=True)
    urls = {r["name"]: [h["url"] for h in r["webhook_configs"]] for r in config["receivers"]}
    assert urls == {"pager": ["http://127.0.0.1:9/p"], "ticket": ["http://127.0.0.1:9/t"]}
    assert config["route"]["group_wait"] == "1s"
    assert all(r.get("group_wait", "1s") == "1s" for r in config["route"]["routes"])
    # Routing and inhibition are untouched.
    committed = _committed()
    assert config["route"]["group_by"] == committed["route"]["group_by"]
    assert config["inhibit_rules"] == committed["inhibit_rules"]


def test_render_keeps_production_timers_unless_fast() -> None:
    config = render("http://a/p", "http://a/t")
    assert config["route"]["group_wait"] == _committed()["route"]["group_wait"]


def test_one_page_per_agent_and_pattern() -> None:
    assert _committed()["route"]["group_by"] == ["alertname", "agent_id", "pattern"]


def test_behaviour_alerts_are_inhibited_while_the_pipeline_is_down() -> None:
    rules = _committed()["inhibit_rules"]
    assert {"source_matchers": ['alertname="AgentgovPipelineDown"'],
            "target_matchers": ['signal="behaviour"']} in rules
    behaviour = {r["alert"] for r in all_rules() if r.get("labels", {}).get("signal") == "behaviour"}
    assert behaviour == {"AgentgovBehaviourDrift", "AgentgovPolicyDrift"}
    alert_names = {r["alert"] for r in all_rules() if "alert" in r}
    for rule in rules:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            if matcher.startswith("alertname="):
                assert matcher.split("=", 1)[1].strip('"') in alert_names, matcher


@pytest.mark.parametrize("which", ["committed", "rendered"])
def test_amtool_check_config(which: str, rendered: Path) -> None:
    path = AM_DIR / "alertmanager.yml" if which == "committed" else rendered
    out = subprocess.run([amtool(), "check-config", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=AgentgovHiddenEscalation", "agent_id=a", "pattern=tier_stepping"],
         "pager"),
        (["severity=critical", "alertname=AgentgovPipelineDown", "job=agentgov-writer"], "pager"),
        (["severity=warning", "alertname=AgentgovBehaviourDrift"], "ticket"),
        (["alertname=Unlabelled"], "ticket"),
    ],
)
def test_routes(labels: list[str], receiver: str, rendered: Path) -> None:
    for path in (AM_DIR / "alertmanager.yml", rendered):
        out = subprocess.run([amtool(), "config", "routes", "test", f"--config.file={path}", *labels],
                             capture_output=True, text=True, check=False)
        assert out.stdout.strip() == receiver, out.stdout + out.stderr


def test_every_alert_severity_has_a_route() -> None:
    routed = {m.split("=", 1)[1].strip('"') for r in _committed()["route"]["routes"] for m in r["matchers"]}
    assert {r["labels"]["severity"] for r in all_rules() if "alert" in r} <= routed
