"""Recertification and input-attribute review in a real headless Chromium (Debian's package, driven by
Playwright, as test_review_browser.py), on the embedded pipeline carrying the demo's planted violations
plus a few agent grants at tier >= 2 of one agent.

1. A reviewer creates a campaign over tier >= 2 agent-granted access, sees each recommendation with its
   reasons, revokes the one with a critical finding, certifies the rest in one bulk decision (refused
   while the selection mixes recommendations), signs off: one remediation request per revoke is on the
   workbench's topic, the history names the reviewer, the gauges and `agentgov review export` show it.
2. An input-attribute review of the demo's jml-provisioning workflow shows the planted out-of-allowlist
   input (credit_score) with its AG-BND-001 findings; disallowing produces a diff that `agentgov policy
   check` accepts; once the governance team applied it, the review links the policy version.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.schemas import SchemaSet
from pipeline.scoring.policy import default_policy_path
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.workload import Workload, run_step
from tests.support.helpers import consume, wait_until

from .review_harness import USERS, make_app, review_overrides, screenshot_dir, served

pytestmark = pytest.mark.integration


def _sign_in(page: Any, base: str, user: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{base}/login")
    page.fill("input[name=token]", USERS[user][0])
    page.click("#signin")
    page.wait_for_url(f"{base}/queue")


def _grants(agent: str) -> list[dict[str, Any]]:
    """One privileged grant without human approval (AG-AUTH-001, critical) and three clean, human-approved
    tier-2 grants, each in its own run; one tier-1 grant outside the scope."""
    joiner = ("joiner", f"HR-{uuid.uuid4().hex[:6]}")
    tag = uuid.uuid4().hex[:6]
    out = [run_step(f"run-rc-{tag}-0", 0, agent, "jml-provisioning", joiner, "grant_entitlement", f"u-rc-{tag}-0",
                    "aws", "role/Admin", 3, resource__entitlement="aws-admin")]
    for i in (1, 2, 3):
        out.append(run_step(f"run-rc-{tag}-{i}", 0, agent, "jml-provisioning", joiner, "grant_entitlement",
                            f"u-rc-{tag}-{i}", "salesforce", "crm", 2, resource__entitlement=f"crm-manager-{i}",
                            decision__approved_by="mgr-sales"))
    out.append(run_step(f"run-rc-{tag}-4", 0, agent, "jml-provisioning", joiner, "add_group_member",
                        f"u-rc-{tag}-4", "slack", "grp-general", 1))
    return out


def _apply(text: str, diff: str) -> str:
    """Apply a unified diff (what the governance team's change process does; agentgov never does)."""
    lines, out, i = text.splitlines(keepends=True), [], 0
    hunks = re.split(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@.*\n", diff, flags=re.M)
    for start, body in zip(hunks[1::2], hunks[2::2], strict=True):
        at = int(start) - 1
        out += lines[i:at]
        i = at
        for line in body.splitlines(keepends=True):
            if line.startswith((" ", "-")):
                assert lines[i] == line[1:], (lines[i], line)
                i += 1
            if line.startswith((" ", "+")):
                out.append(line[1:])
    return "".join(out + lines[i:])


def _gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_recertification_and_input_review_in_chromium(settings_factory: Callable[..., Settings],
                                                      pipeline_factory: Callable[..., Pipeline],
                                                      publisher_factory: Callable[..., TransitionPublisher],
                                                      browser_page: Any, tmp_path: Path) -> None:
    page, shots = browser_page, screenshot_dir(tmp_path)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(default_policy_path().read_text())
    settings = settings_factory(**review_overrides(policy_file=policy_file))
    pipe = pipeline_factory(settings)
    pub = publisher_factory(settings)
    for op in Workload(seed=7)._planted():
        op.publish(pub)
    agent = f"agent-jml-rc{uuid.uuid4().hex[:4]}"
    for d in _grants(agent):
        pub.publish(d)
    pub.producer.flush(10)
    sink = ClickHouseSink.connect(settings)
    assert wait_until(lambda: sink.query("SELECT count() AS n FROM {db}.access_changes WHERE agent_id = {a:String}",
                                         {"a": agent})[0]["n"] == 5)
    assert wait_until(lambda: sink.query("SELECT count() AS n FROM {db}.findings WHERE agent_id = {a:String} "
                                         "AND code = 'AG-AUTH-001'", {"a": agent})[0]["n"] == 1)
    assert wait_until(lambda: sink.query("SELECT count() AS n FROM {db}.findings WHERE code = 'AG-BND-001'")[0]["n"])
    app = make_app(pipe, settings)

    with served(app) as base:
        # -- 1. campaign over tier >= 2 agent-granted access ---------------------------------------
        _sign_in(page, base, "alice")
        page.goto(f"{base}/campaigns")
        page.fill("#c-name", "Q4 privileged access")
        page.fill("#c-due", (datetime.now(UTC) + timedelta(days=14)).strftime("%Y-%m-%d"))
        page.select_option("#c-tier", "2")
        page.fill("#c-agent", agent)
        page.click("#c-create")
        assert page.text_content("#c-state") == "open"
        assert page.text_content("#progress").startswith("0/4 decided")
        rows = page.locator("tr.item-row")
        assert rows.count() == 4  # the tier-1 grant is out of scope
        recs = {rows.nth(i).get_attribute("data-access"): rows.nth(i) for i in range(4)}
        assert recs["aws-admin"].get_attribute("data-rec") == "revoke"
        assert "critical finding AG-AUTH-001 on the grant" in recs["aws-admin"].locator("ul.reasons").inner_text()
        for i in (1, 2, 3):
            row = recs[f"crm-manager-{i}"]
            assert row.get_attribute("data-rec") == "certify"
            reasons = row.locator("ul.reasons").inner_text()
            assert "human-approved by mgr-sales" in reasons and "approved policy version iga-access-policy@7" in reasons
        page.screenshot(path=str(shots / "recert-campaign.png"), full_page=True)
        campaign_url = page.url

        # A bulk decision over mixed recommendations is refused.
        page.locator("tr.item-row input[name=sel]").first.check()
        page.locator("tr.item-row input[name=sel]").nth(1).check()
        page.locator("tr.item-row input[name=sel]").nth(2).check()
        page.fill("#bulk-justification", "quarterly review")
        page.click("#bulk-apply")
        assert "sharing one recommendation" in page.text_content("#error")

        # Revoke the critical one, with a justification and an end date.
        page.goto(campaign_url)
        page.locator("tr.item-row[data-rec=revoke] a.item-link").click()
        assert "critical finding AG-AUTH-001 on the grant" in page.text_content("#item-reasons")
        page.fill("#justification", "Admin without approval; not needed for the role.")
        page.fill("#end-date", (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%d"))
        page.click("#revoke")
        assert page.text_content("#item-state") == "revoked"
        assert page.locator("#history tbody tr").nth(1).locator("td.who").inner_text() == "alice"

        # Certify the rest in one bulk decision.
        page.goto(f"{campaign_url}?recommendation=certify")
        assert page.locator("tr.item-row").count() == 3
        for i in range(3):
            page.locator("tr.item-row input[name=sel]").nth(i).check()
        page.fill("#bulk-justification", "Approved by the sales manager; still in role.")
        page.click("#bulk-apply")
        assert page.text_content("#bulk-done") == "3 decided."
        page.click("#back")
        assert page.text_content("#progress").startswith("4/4 decided (3 certified, 1 revoked")

        page.fill("#signoff-comment", "All four grants reviewed with the sales manager.")
        page.click("#signoff")
        assert page.text_content("#c-state") == "closed"
        history = page.locator("#history tbody tr")
        assert [history.nth(i).locator("td.who").inner_text() for i in range(history.count())] == ["alice", "alice"]
        assert "1 remediation requests" in history.nth(1).inner_text()
        page.screenshot(path=str(shots / "recert-signed-off.png"), full_page=True)
        cid = campaign_url.rsplit("/", 1)[1]

        msgs = consume(settings, settings.topic_remediations, 1, timeout=20, settle=1.0)
        reqs = [Serde(SchemaSet.load(), record="remediation_request").decode(m.value()).record for m in msgs]
        assert len(reqs) == 1
        rem = reqs[0]
        assert rem["code"] == "RECERT-REVOKE" and rem["finding_id"].startswith(cid) and rem["agent_id"] == agent
        assert rem["target_id"].endswith("-0") and rem["requested_by"] == "alice" and rem["severity"] == "critical"

        # Gauges: the campaign is closed, none overdue.
        metrics = _gauges(page.request.get(f"{base}/metrics").text())
        assert metrics[("agentgov_recert_campaigns", (("state", "closed"),))] == 1
        assert metrics[("agentgov_recert_campaigns_overdue", ())] == 0

        # -- 2. input-attribute review of the demo's workflow ----------------------------------------
        page.goto(f"{base}/attributes")
        page.select_option("#a-workflow", "jml-provisioning")
        page.click("#a-open")
        planted = page.locator("tr.attr-row[data-name=credit_score]")
        assert planted.get_attribute("data-permitted") == "no"
        assert int(planted.locator("td.bnd001").inner_text()) >= 1
        assert page.locator("tr.attr-row[data-name=department]").get_attribute("data-permitted") == "yes"
        planted.locator(".a-justification").fill("Credit data must never drive access decisions.")
        planted.locator(".a-disallow").click()
        job = page.locator("tr.attr-row[data-name=job_code]")
        job.locator(".a-justification").fill("Superseded by the role catalogue; stop evaluating job codes.")
        job.locator(".a-disallow").click()
        assert "disallowed by alice" in page.locator("tr.attr-row[data-name=credit_score] td.decision").inner_text()
        page.click("#a-propose")
        diff = page.text_content("pre.diff")
        assert "-    default_inputs: [department, job_code, manager, location" in diff
        assert "+    default_inputs: [department, manager, location" in diff
        assert "2026.11.0 " not in page.text_content("span.check")  # validated: the proposed version
        page.screenshot(path=str(shots / "recert-attributes.png"), full_page=True)
        review_url = page.url.split("#")[0]

        page.click("#a-link")  # the policy in force does not include the decisions yet
        assert "does not include the decisions yet" in page.text_content("#error")

        proposed = tmp_path / "proposed.yaml"
        proposed.write_text(_apply(policy_file.read_text(), diff))
        check = subprocess.run([sys.executable, "-m", "pipeline.cli", "policy", "check", str(proposed)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        assert "2026.11.0+arv-" in check.stdout
        policy_file.write_text(proposed.read_text())  # the governance team's change process applied it
        # nobody clicks: the app's policy watch sees the new version include the decisions and links it
        deadline = time.monotonic() + 60
        while True:
            page.goto(review_url)
            if page.locator("#a-included").count():
                break
            assert time.monotonic() < deadline, "the policy watch never linked the review to the new version"
            time.sleep(1)
        assert "included in policy version 2026.11.0+arv-" in page.text_content("#a-included")
        history = page.locator("#history tbody tr")
        who = {history.nth(i).locator("td.who").inner_text() for i in range(history.count())}
        assert who == {"alice", "agentgov:policy-watch"}

    # -- 3. `agentgov review export` carries campaigns, items, decisions and attribute reviews ------
    from click.testing import CliRunner

    from pipeline.cli import main

    out = tmp_path / "export.jsonl"
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    result = CliRunner().invoke(main, ["review", "export", "--since", since, "-o", str(out)],
                                env={"AGENTGOV_CLICKHOUSE_DSN": settings.clickhouse_dsn,
                                     "AGENTGOV_CLICKHOUSE_DATABASE": settings.clickhouse_database})
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {r["kind"] for r in rows if r["type"] == "decision"}
    assert {"campaign.create", "campaign.snapshot", "campaign.revoke", "campaign.certify", "campaign.signoff",
            "attributes.open", "attribute.disallow", "attributes.propose", "attributes.included"} <= kinds
    revoke = next(r for r in rows if r.get("kind") == "campaign.revoke")
    assert revoke["actor"] == "alice" and revoke["comment"].startswith("Admin without approval")
