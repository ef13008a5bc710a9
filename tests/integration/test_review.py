"""Review workbench through the real pipeline (embedded broker, scorer subprocess, writer, chdb), over HTTP.

Decisions go app -> Kafka -> writer -> ClickHouse, and are read back from the store; nothing is mocked.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from tests.support.helpers import consume, wait_until

from .review_harness import Client, make_app, review_overrides, transient_chain

pytestmark = pytest.mark.integration


def _queue(c: Client, **params: str) -> list[dict]:
    return c.get("/api/findings", params=params).json()["findings"]


def test_triage_close_true_positive_history_conflict_and_auditor(
        settings_factory: Callable[..., Settings], pipeline_factory: Callable[..., Pipeline],
        publisher_factory: Callable[..., TransitionPublisher]) -> None:
    settings = settings_factory(**review_overrides())
    pipe = pipeline_factory(settings)
    agent, run = "agent-jml-rogue-<script>alert(1)</script>", f"run-{uuid.uuid4().hex[:8]}"
    pub = publisher_factory(settings)
    for d in transient_chain(agent, run):
        pub.publish(d)
    pub.producer.flush(10)
    app = make_app(pipe, settings)
    alice, audrey = Client(app, "alice"), Client(app, "audrey")

    rows = wait_until(lambda: _queue(alice, agent=agent))
    assert [r["code"] for r in rows] == ["AG-ESC-003"]
    row = rows[0]
    assert row["status"] == "new" and row["version"] == 0 and row["severity"] == "critical"
    assert len(row["related_event_ids"]) == 2  # one row for the whole chain
    assert row["sla"]["hours"] == 4.0 and row["sla"]["breached"] is False
    path = f"/api/findings/{row['event_id']}/{row['code']}"

    # The XSS payload in the agent id is escaped on the page, and scripts are off by CSP anyway.
    page = alice.get("/queue", params={"agent": agent})
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "script-src 'none'" in page.headers["content-security-policy"]
    # The finding page's trail names the attributes each step evaluated, with their source.
    finding_page = alice.get(f"/findings/{row['event_id']}/{row['code']}")
    assert "department@hris" in finding_page.text, "the evaluated inputs are missing from the trail"

    # Auditor: reads everything, changes nothing.
    assert audrey.get(path).status_code == 200
    refused = audrey.post(f"{path}/decisions", {"action": "acknowledge", "expected_version": 0})
    assert refused.status_code == 403

    # No CSRF header: refused, even with a valid identity.
    no_csrf = alice.http.post(f"{path}/decisions", json={"action": "acknowledge", "expected_version": 0})
    assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["error"]

    ack = alice.post(f"{path}/decisions", {"action": "acknowledge", "expected_version": 0})
    assert ack.status_code == 201, ack.text
    # A stale form (version 0 again) gets 409 with the current state, never an overwrite.
    stale = alice.post(f"{path}/decisions", {"action": "close", "expected_version": 0,
                                             "classification": "false_positive", "reason": "rule_too_broad",
                                             "comment": "x"})
    assert stale.status_code == 409
    assert stale.json()["current"] == {"state": "acknowledged", "version": 1, "assignee": "alice"}
    # Closing needs a classification, a listed reason and a comment.
    bad = alice.post(f"{path}/decisions", {"action": "close", "expected_version": 1, "classification": "true_positive",
                                           "reason": "because", "comment": "x"})
    assert bad.status_code == 400
    # Actor spoofing through a body field is rejected (unknown field), through a form field ignored (below).
    spoof = alice.post(f"{path}/decisions", {"action": "close", "expected_version": 1, "actor": "mallory"})
    assert spoof.status_code == 422
    closed = alice.post(f"{path}/decisions", {"action": "close", "expected_version": 1,
                                              "classification": "true_positive", "reason": "confirmed_misuse",
                                              "comment": "chain confirmed with the IAM team"})
    assert closed.status_code == 201, closed.text
    remediation_id = closed.json()["payload"]["remediation_id"]

    doc = alice.get(path).json()
    assert doc["state"] == "closed" and doc["version"] == 2
    assert [(h["actor"], h["kind"], h["from_state"], h["to_state"]) for h in doc["history"]] == [
        ("alice", "finding.acknowledge", "new", "acknowledged"), ("alice", "finding.close", "acknowledged", "closed")]
    assert doc["history"][1]["classification"] == "true_positive" and doc["history"][1]["decided_at"]
    assert set(doc["trails"]) == {run} and len(doc["trails"][run]) == 2
    assert _queue(alice, agent=agent) == []  # closed leaves the open queue
    assert [r["id"] for r in _queue(alice, agent=agent, status="closed")] == [row["id"]]

    # The remediation request went to its own topic for IGA/SOAR tooling.
    msgs = consume(pipe.settings, settings.topic_remediations, 1, timeout=20)
    from pipeline.schemas import SchemaSet
    from pipeline.serde import Serde

    rem = Serde(SchemaSet.load(), record="remediation_request").decode(msgs[0].value()).record
    assert rem["request_id"] == remediation_id and rem["finding_id"] == row["id"] and rem["requested_by"] == "alice"

    # Reopen through the HTML form with a spoofed actor field: the history names the signed-in user.
    form = {"action": "reopen", "version": "2", "comment": "regression", "actor": "mallory",
            "csrf_token": alice.csrf}
    r = alice.http.post(f"/findings/{row['event_id']}/{row['code']}", data=form, follow_redirects=False)
    assert r.status_code == 303
    hist = alice.get(path).json()["history"]
    assert hist[-1]["actor"] == "alice" and hist[-1]["to_state"] == "acknowledged"
    assert "mallory" not in json.dumps(hist)
    # A form without the CSRF token is refused.
    r = alice.http.post(f"/findings/{row['event_id']}/{row['code']}", data={"action": "close", "version": "3"},
                        follow_redirects=False)
    assert r.status_code == 403

    # Decisions appear in `agentgov trail` and in `agentgov review export`.
    sink = ClickHouseSink.connect(settings)
    from pipeline.review.store import ReviewStore

    store = ReviewStore(sink)
    assert [d["kind"] for d in store.run_decisions(run)] == ["finding.acknowledge", "finding.close",
                                                              "finding.reopen"]
    since = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    exported, end = store.export(since)
    assert end is None and {e["kind"] for e in exported if e["type"] == "decision"} >= {"finding.close"}
    paged, cursor = [], None  # keyset pages of 2 through the real store: the same rows, none twice
    while True:
        rows, cursor = store.export(since, after=cursor, limit=2)
        assert len(rows) <= 2
        paged += rows
        if cursor is None:
            break
    assert paged == exported and len(exported) >= 3


def test_untrusted_proxy_headers_are_ignored(settings_factory: Callable[..., Settings],
                                             pipeline_factory: Callable[..., Pipeline]) -> None:
    settings = settings_factory(review_auth="proxy", review_trusted_proxies=["10.9.9.9/32"])
    pipe = pipeline_factory(settings)
    app = make_app(pipe, settings)
    from fastapi.testclient import TestClient

    headers = {"X-Forwarded-User": "mallory", "X-Forwarded-Groups": "agentgov-approvers"}
    untrusted = TestClient(app, client=("203.0.113.5", 5000))
    assert untrusted.get("/api/me", headers=headers).status_code == 401
    trusted = TestClient(app, client=("10.9.9.9", 5000))
    me = trusted.get("/api/me", headers=headers).json()
    assert me["user"] == "mallory" and me["roles"] == ["approver"]


def test_decisions_and_exceptions_survive_restarts_and_appear_in_trail_and_export(
        settings_factory: Callable[..., Settings], pipeline_factory: Callable[..., Pipeline],
        publisher_factory: Callable[..., TransitionPublisher]) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    settings = settings_factory(**review_overrides())
    pipe = pipeline_factory(settings)
    pub = publisher_factory(settings)
    triaged, accepted = "agent-jml-triaged", f"agent-jml-accepted-{uuid.uuid4().hex[:6]}"
    run = f"run-{uuid.uuid4().hex[:8]}"
    for d in transient_chain(triaged, run):
        pub.publish(d)
    pub.producer.flush(10)
    app = make_app(pipe, settings)
    alice, rita, bob = Client(app, "alice"), Client(app, "rita"), Client(app, "bob")
    row = wait_until(lambda: _queue(alice, agent=triaged))[0]
    path = f"/api/findings/{row['event_id']}/{row['code']}"
    assert alice.post(f"{path}/decisions", {"action": "acknowledge", "expected_version": 0}).status_code == 201
    assert alice.post(f"{path}/decisions", {"action": "close", "expected_version": 1, "classification": "duplicate",
                                            "reason": "duplicate_of_other", "comment": "see INC-7"}).status_code == 201
    expires = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    req = rita.post("/api/exceptions", {"code": "AG-ESC-003", "agent_id": accepted, "justification": "batch job",
                                        "expires_at": expires})
    assert req.status_code == 201, req.text
    xid = req.json()["exception_id"]
    own = rita.post(f"/api/exceptions/{xid}/decisions", {"action": "approve", "expected_version": 1})
    assert own.status_code == 403 and "four-eyes" in own.json()["error"]
    assert bob.post(f"/api/exceptions/{xid}/decisions", {"action": "approve", "expected_version": 1}).status_code == 200
    stale = bob.post(f"/api/exceptions/{xid}/decisions", {"action": "revoke", "expected_version": 1})
    assert stale.status_code == 409 and stale.json()["current"]["version"] == 2

    # Restart the whole pipeline (broker stays: it is the session's) and the app.
    pipe.stop()
    app.state.ctx.service.close()
    pipe2 = pipeline_factory(settings)
    app2 = make_app(pipe2, settings)
    alice2 = Client(app2, "alice")
    doc = alice2.get(path).json()
    assert (doc["state"], doc["version"]) == ("closed", 2)
    assert [h["actor"] for h in doc["history"]] == ["alice", "alice"]
    exc = alice2.get(f"/api/exceptions/{xid}").json()
    assert exc["exception"]["status"] == "active" and [v["state"] for v in exc["versions"]] == ["requested", "active"]
    assert [(h["kind"], h["actor"]) for h in exc["history"]] == [("exception.request", "rita"),
                                                                 ("exception.approve", "bob")]
    active = alice2.get("/api/exceptions", params={"status": "active", "limit": 1}).json()
    requested = alice2.get("/api/exceptions", params={"status": "requested"}).json()
    assert active["total"] >= 1 and len(active["exceptions"]) == 1 and active["exceptions"][0]["status"] == "active"
    assert xid not in [e["exception_id"] for e in requested["exceptions"]]
    assert alice2.get("/api/exceptions", params={"status": "bogus"}).status_code == 422
    # The gauges' counts come from one aggregate in the store; they agree with the statuses listed.
    store2 = app2.state.ctx.store
    counts, expiring = store2.exception_counts(int(datetime.now(UTC).timestamp() * 1000))
    listed = alice2.get("/api/exceptions", params={"limit": 500}).json()
    assert counts == {s: sum(e["status"] == s for e in listed["exceptions"]) for s in counts}
    assert counts["active"] >= 1 and expiring >= 1  # it ends in 3 days
    later = int((datetime.now(UTC) + timedelta(days=30)).timestamp() * 1000)  # past the 3-day expiry
    assert store2.exception_counts(later)[0]["expired"] >= 1

    # The API's export in pages of one, following the Link header, is the export in one page.
    since_api = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    whole = alice2.get("/api/export", params={"since": since_api})
    assert whole.status_code == 200 and "link" not in whole.headers
    paged_api, url = [], f"/api/export?since={quote(since_api)}&limit=1"
    while url:
        page = alice2.get(url)
        assert page.status_code == 200 and len(page.json()) == 1, page.text
        paged_api += page.json()
        url = page.headers["link"].split(">")[0][1:] if "link" in page.headers else ""
    assert paged_api == whole.json() and len(paged_api) >= 4
    assert alice2.get("/api/export", params={"since": since_api, "after": "bm90IGEgY3Vyc29y"}).status_code == 400

    # The restarted scorer rebuilt its exceptions from the compacted topic: a new matching event is excepted.
    excepted_run = f"run-{uuid.uuid4().hex[:8]}"
    sink = ClickHouseSink.connect(settings)

    def excepted() -> list[dict]:
        return sink.query("SELECT exception_id, exception_version FROM {db}.findings FINAL WHERE run_id = {r:String}",
                          {"r": excepted_run})

    for d in transient_chain(accepted, excepted_run):
        pub.publish(d)
    pub.producer.flush(10)
    assert wait_until(excepted) == [{"exception_id": xid, "exception_version": 2}]
    assert _queue(alice2, agent=accepted) == []
    # The same chain on the approver's own access (bob approved an exception scoped without a target): not
    # covered, it is queued as any other finding.
    own_run = f"run-{uuid.uuid4().hex[:8]}"
    for d in transient_chain(accepted, own_run):
        d["target"]["identity_id"] = "BOB"
        pub.publish(d)
    pub.producer.flush(10)

    def own() -> list[dict]:
        return sink.query("SELECT code, exception_id FROM {db}.findings FINAL WHERE run_id = {r:String}",
                          {"r": own_run})

    assert wait_until(own) == [{"code": "AG-ESC-003", "exception_id": None}]

    env = {"AGENTGOV_CLICKHOUSE_DSN": settings.clickhouse_dsn,
           "AGENTGOV_CLICKHOUSE_DATABASE": settings.clickhouse_database}
    out = CliRunner().invoke(main, ["trail", run], env=env)
    assert out.exit_code == 0, out.output
    assert "> finding.close v2 by alice" in out.output and "(duplicate, duplicate_of_other): see INC-7" in out.output
    out = CliRunner().invoke(main, ["trail", excepted_run], env=env)
    assert f"[excepted by {xid} v2]" in out.output
    since = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    out = CliRunner().invoke(main, ["review", "export", "--since", since], env=env)
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    kinds = [(r["type"], r.get("kind") or r.get("state")) for r in lines]
    assert ("decision", "finding.close") in kinds and ("exception", "active") in kinds
    assert ("decision", "exception.approve") in kinds
