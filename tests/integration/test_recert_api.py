"""Recertification through the JSON API on the embedded pipeline: every scope, a leaver's access, reassign,
stale versions, the no-auto-apply refusal, never-certified campaigns and keyset paging."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.workload import run_step
from tests.support.helpers import wait_until

from .review_harness import Client, make_app, review_overrides

pytestmark = pytest.mark.integration


def _due(days: int = 7) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def test_campaign_scopes_decisions_and_refusals(settings_factory: Callable[..., Settings],
                                                pipeline_factory: Callable[..., Pipeline],
                                                publisher_factory: Callable[..., TransitionPublisher]) -> None:
    settings = settings_factory(**review_overrides())
    pipe = pipeline_factory(settings)
    pub = publisher_factory(settings)
    tag = uuid.uuid4().hex[:6]
    a1, a2, a3 = f"agent-jml-x{tag}", f"agent-access-x{tag}", f"agent-priv-x{tag}"
    joiner, leaver = ("joiner", f"HR-{tag}"), ("leaver", f"HR-{tag}-l")
    drafts: list[dict[str, Any]] = [
        # a1 in jml-provisioning: 3 approved tier-2 grants; the identity of the first one leaves afterwards.
        *[run_step(f"run-{tag}-{i}", 0, a1, "jml-provisioning", joiner, "grant_entitlement", f"u-{tag}-{i}",
                   "salesforce", "crm", 2, resource__entitlement=f"crm-{i}",
                   decision__approved_by="mgr") for i in range(3)],
        run_step(f"run-{tag}-l", 0, a1, "jml-provisioning", leaver, "disable_account", f"u-{tag}-0", "entra-id",
                 f"acct-{tag}-0", 1, target__lifecycle_state="terminated"),
        # a2 in access-request: one tier-2 grant, and one later revoked (no longer held).
        run_step(f"run-{tag}-r", 0, a2, "access-request", ("access_request", f"REQ-{tag}"), "grant_entitlement",
                 f"u-{tag}-9", "github", "org", 2, resource__entitlement="gh-maintain", decision__approved_by="mgr"),
        run_step(f"run-{tag}-r", 1, a2, "access-request", ("access_request", f"REQ-{tag}"), "grant_entitlement",
                 f"u-{tag}-9", "github", "org", 2, resource__entitlement="gh-admin-tmp", decision__approved_by="mgr"),
        run_step(f"run-{tag}-r", 2, a2, "access-request", ("access_request", f"REQ-{tag}"), "revoke_entitlement",
                 f"u-{tag}-9", "github", "org", 2, resource__entitlement="gh-admin-tmp"),
        # a3: a tier-3 grant with no human approval (a serious finding), later dismissed by a reviewer.
        run_step(f"run-{tag}-p", 0, a3, "access-request", ("access_request", f"REQ-{tag}-p"), "grant_entitlement",
                 f"u-{tag}-p", "aws", "role/Admin", 3, resource__entitlement="aws-admin"),
    ]
    # a4: a no-op revoke and a grant of one access stamped the same millisecond, the revoke's id (the agent's
    # choice) sorting last: the grant wins the tie, so the held access is not left out of a campaign.
    a4 = f"agent-tie-x{tag}"
    tie = [run_step(f"run-{tag}-t", step, a4, "access-request", ("access_request", f"REQ-{tag}-t"), action,
                    f"u-{tag}-t", "salesforce", "crm", 2, resource__entitlement="crm-tie", decision__approved_by="mgr")
           for step, action in ((0, "revoke_entitlement"), (1, "grant_entitlement"))]
    tie[0]["event_id"] = f"ffffffff-{tag[:4]}-4000-8000-{uuid.uuid4().hex[:12]}"
    tie[1]["event_id"] = f"00000000-{tag[:4]}-4000-8000-{uuid.uuid4().hex[:12]}"
    start = datetime.now(UTC) - timedelta(minutes=5)
    for i, d in enumerate(drafts):  # distinct event times: the revoke is the latest change of its access
        d["occurred_at"] = (start + timedelta(seconds=i)).isoformat()
        pub.publish(d)
    for d in tie:
        d["occurred_at"] = (start + timedelta(seconds=len(drafts))).isoformat()
        pub.publish(d)
    drafts += tie
    pub.producer.flush(10)
    sink = ClickHouseSink.connect(settings)
    assert wait_until(lambda: sink.query("SELECT count() AS n FROM {db}.access_changes WHERE run_id LIKE {r:String}",
                                         {"r": f"run-{tag}-%"})[0]["n"] == len(drafts))
    app = make_app(pipe, settings)
    alice, rita, audrey = Client(app, "alice"), Client(app, "rita"), Client(app, "audrey")

    def create(**scope: Any) -> dict[str, Any]:
        r = alice.post("/api/campaigns", {"name": "t", "owner": "alice", "due_at": _due(), **scope})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def items(cid: str, **q: Any) -> list[dict[str, Any]]:
        return list(alice.get(f"/api/campaigns/{cid}/items", params={"limit": 1000, **q}).json()["items"])

    # -- scopes --------------------------------------------------------------------------------------
    assert create(min_tier=2, agent=a1)["items"] == 3
    assert create(workflow="access-request", agent=a2)["items"] == 1  # the revoked grant is not held
    assert create(min_tier=3, agent=a1)["items"] == 0
    assert create(agent=a4)["items"] == 1  # a grant and a revoke of one millisecond: the grant is the latest
    assert create(agent=a1, within_days=1)["items"] == 3
    main = create(min_tier=2, agent=a1)
    cid = main["campaign_id"]
    rows = {i["access"]: i for i in items(cid)}
    assert rows["crm-0"]["recommendation"] == "revoke"
    assert rows["crm-0"]["identity_left"] == "1" and "disable_account" in rows["crm-0"]["reasons"][0]
    assert rows["crm-1"]["recommendation"] == "certify" and rows["crm-1"]["workflow_id"] == "jml-provisioning"
    assert rows["crm-1"]["inputs"] == ["department:hris", "job_code:hris", "manager:hris"]

    # Keyset paging returns every item once.
    first = alice.get(f"/api/campaigns/{cid}/items", params={"limit": 2}).json()
    rest = alice.get(f"/api/campaigns/{cid}/items", params={"limit": 2, "after": first["next"]}).json()
    assert [i["item_id"] for i in first["items"] + rest["items"]] == sorted(rows[k]["item_id"] for k in rows)
    assert rest["next"] is None

    # -- refusals ------------------------------------------------------------------------------------
    r = alice.post("/api/campaigns", {"name": "t", "owner": "alice", "due_at": _due(), "on_timeout": "revoke"})
    assert r.status_code == 400 and "revokes everything nobody looked at" in r.json()["error"]
    assert audrey.post("/api/campaigns", {"name": "t", "owner": "audrey", "due_at": _due()}).status_code == 403
    n1 = rows["crm-1"]["item_id"].rsplit("/", 1)[1]
    r = alice.post(f"/api/campaigns/{cid}/items/{n1}", {"action": "certify", "expected_version": 1})
    assert r.status_code == 400 and "certify needs a justification" in r.json()["error"]
    r = rita.post(f"/api/campaigns/{cid}/items/{n1}", {"action": "certify", "expected_version": 1,
                                                       "justification": "ok"})
    assert r.status_code == 403  # not the assignee, not the owner
    r = alice.post(f"/api/campaigns/{cid}/signoff", {"expected_version": 1, "comment": "early"})
    assert r.status_code == 400 and "3 items are still pending" in r.json()["error"]

    # -- reassign, then the new assignee decides; a stale version is refused ---------------------------
    r = alice.post(f"/api/campaigns/{cid}/items/{n1}", {"action": "reassign", "expected_version": 1,
                                                        "reassign_to": "rita", "justification": "rita owns CRM"})
    assert r.status_code == 200, r.text
    r = rita.post(f"/api/campaigns/{cid}/items/{n1}", {"action": "certify", "expected_version": 1,
                                                       "justification": "ok"})
    assert r.status_code == 409 and r.json()["current"]["assignee"] == "rita"
    r = rita.post(f"/api/campaigns/{cid}/items/{n1}", {"action": "certify", "expected_version": 2,
                                                       "justification": "still on the CRM team"})
    assert r.status_code == 200 and r.json()["actor"] == "rita"
    bulk = alice.post(f"/api/campaigns/{cid}/bulk", {"action": "certify", "justification": "x", "selection": {
        rows["crm-0"]["item_id"]: 1, rows["crm-2"]["item_id"]: 1}})
    assert bulk.status_code == 400 and "sharing one recommendation" in bulk.json()["error"]
    for key, action in (("crm-0", "revoke"), ("crm-2", "certify")):
        n = rows[key]["item_id"].rsplit("/", 1)[1]
        assert alice.post(f"/api/campaigns/{cid}/items/{n}", {"action": action, "expected_version": 1,
                                                              "justification": "reviewed"}).status_code == 200
    r = alice.post(f"/api/campaigns/{cid}/signoff", {"expected_version": 1, "comment": " "})
    assert r.status_code == 400 and "needs an attestation comment" in r.json()["error"]
    done = alice.post(f"/api/campaigns/{cid}/signoff", {"expected_version": 1, "comment": "done"})
    assert done.status_code == 200 and len(done.json()["remediation_requests"]) == 1
    listed = {c["campaign_id"]: c for c in alice.get("/api/campaigns").json()}
    assert listed[cid]["state"] == "closed" and listed[cid]["progress"]["decided"] == 3
    r = alice.post(f"/api/campaigns/{cid}/signoff", {"expected_version": 2, "comment": "again"})
    assert r.status_code == 400 and "already signed off" in r.json()["error"]

    # -- a finding a reviewer closed as false positive no longer drives the recommendation ------------
    [priv] = items(create(agent=a3)["campaign_id"])
    assert priv["recommendation"] == "revoke", priv
    findings = wait_until(lambda: alice.get("/api/findings", params={"agent": a3}).json()["findings"])
    assert findings
    for f in findings:
        r = alice.post(f"/api/findings/{f['event_id']}/{f['code']}/decisions",
                       {"action": "close", "expected_version": f["version"], "classification": "false_positive",
                        "reason": "rule_too_broad", "comment": "break-glass drill, approved out of band"})
        assert r.status_code == 201, r.text
    [again_priv] = items(create(agent=a3)["campaign_id"])
    assert again_priv["recommendation"] != "revoke", again_priv
    assert not any("finding" in reason for reason in again_priv["reasons"]), again_priv["reasons"]

    # -- never certified: the two certified grants drop out of the next campaign ----------------------
    again = create(agent=a1, never_certified=True)
    assert again["items"] == 1 and items(again["campaign_id"])[0]["access"] == "crm-0"
