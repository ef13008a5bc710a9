"""The workbench app in-process over a fake store: request handling that needs no pipeline.

Limits on what a request may carry, authentication before a body is read, sessions, and errors that must
be 4xx rather than 500. The store answers every query with no rows unless a test plants some; publishing
is replaced by recording."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from pipeline.review.app import create_app
from pipeline.settings import Settings

USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("tok-alice", ["reviewer"]),
    "rita": ("tok-rita", ["reviewer", "approver"]),
    "bob": ("tok-bob", ["approver"]),
}


class FakeSink:
    """Answers every query with no rows, or with what ``answer(sql, params)`` returns."""

    def __init__(self) -> None:
        self.answer: Callable[[str, dict[str, Any]], list[dict[str, Any]] | None] = lambda _s, _p: None
        self.queries: list[str] = []

    def query(self, sql: str, params: dict[str, Any], _settings: Any = None) -> list[dict[str, Any]]:
        self.queries.append(sql)
        return self.answer(sql, params) or []


def settings(**extra: Any) -> Settings:
    return Settings.load(**{
        "schema_registry_url": "mock://review-app", "kafka_bootstrap": "127.0.0.1:1",
        "review_tokens": {u: t for u, (t, _) in USERS.items()},
        "review_users": {u: roles for u, (_, roles) in USERS.items()},
        "review_secret": "unit-secret", "review_store_wait_seconds": 0.2, **extra})


@pytest.fixture
def make_app() -> Iterator[Callable[..., tuple[FastAPI, FakeSink]]]:
    apps: list[FastAPI] = []

    def make(**extra: Any) -> tuple[FastAPI, FakeSink]:
        sink = FakeSink()
        app = create_app(settings(**extra), sink, registry=CollectorRegistry())  # type: ignore[arg-type]
        apps.append(app)
        return app, sink

    yield make
    for app in apps:
        for stop in app.router.on_shutdown:
            stop()


class Client:
    """A TestClient signed in with one user's bearer token, sending the CSRF header on writes."""

    def __init__(self, app: FastAPI, user: str) -> None:
        self.http = TestClient(app, headers={"Authorization": f"Bearer {USERS[user][0]}"})
        self.csrf = self.http.get("/api/me").json()["csrf_token"]

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.http.post(path, json=json, headers=headers, **kw)

    def form(self, path: str, data: dict[str, Any]) -> Any:
        return self.http.post(path, data={"csrf_token": self.csrf, **data}, follow_redirects=False)


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1000-01-01",
                                   "9999-12-31T00:00:00Z"])
def test_export_refuses_out_of_range_datetimes_with_422(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                        since: str) -> None:
    app, _ = make_app()
    r = TestClient(app, headers={"Authorization": "Bearer tok-alice"}).get("/api/export", params={"since": since})
    assert r.status_code == 422, r.text
    assert "out of range" in r.text


def test_body_datetimes_out_of_range_are_422(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    app, _ = make_app()
    alice = Client(app, "alice")
    r = alice.post("/api/exceptions", {"code": "AG-ESC-003", "agent_id": "a", "justification": "j",
                                       "expires_at": "0001-01-01T00:00:00+01:00"})
    assert r.status_code == 422 and "out of range" in r.text
    r = alice.post("/api/campaigns", {"name": "n", "owner": "alice", "due_at": "9999-12-31T23:59:59-12:00"})
    assert r.status_code == 422 and "out of range" in r.text
    r = alice.form("/campaigns", {"name": "n", "owner": "alice", "due": "9999-12-31T23:59:59-12:00"})
    assert r.status_code == 400 and "out of range" in r.text


def _item(cid: str, **kw: Any) -> dict[str, Any]:
    item = {"item_id": f"{cid}/0000001", "state": "revoked", "version": 2, "assignee": "alice", "target_id": "u-1",
            "system": "aws", "access": "role/Admin", "agent_id": "agent-1", "grant_run_id": "run-1",
            "grant_event_id": "e-1", "grant_action": "grant_entitlement", "granted_at_ms": 1_700_000_000_000,
            "workflow_id": "wf", "policy_ref": "", "authority": "agent", "approved_by": "", "findings": [],
            "reasons": [], "inputs": [], "recommendation": "revoke", "tier": "3", "last_kind": "campaign.revoke",
            "last_actor": "alice", "last_comment": "gone", "last_at": 1_700_000_000_000, "end_date": "",
            "last_decision_id": "d-1"}
    item.update(kw)
    return item


def _campaign(cid: str, **kw: Any) -> dict[str, Any]:
    c = {"campaign_id": cid, "state": "open", "version": 1, "name": "Q4", "owner": "alice", "created_by": "rita",
         "created_at": 1_700_000_000_000, "due_at": 4_000_000_000_000, "scope": "all", "item_count": 1,
         "on_timeout": "none", "last_actor": "rita", "last_at": 1_700_000_000_000}
    c.update(kw)
    return c


def test_item_page_survives_a_stored_end_date_no_datetime_can_hold(
        make_app: Callable[..., tuple[FastAPI, FakeSink]], monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app()
    cid = "CMP-000000000001"
    end = "253402343999000"  # 9999-12-31T23:59:59-12:00, stored before end dates were bounded
    monkeypatch.setattr(app.state.recert.store, "campaign", lambda _c: _campaign(cid))
    monkeypatch.setattr(app.state.recert.store, "item", lambda _i: _item(cid, end_date=end))
    monkeypatch.setattr(app.state.ctx.store, "history", lambda _k, _s: [
        {"decision_id": "d-1", "kind": "campaign.revoke", "subject_version": 2, "actor": "alice",
         "actor_roles": ["reviewer"], "decided_at": None, "from_state": "pending", "to_state": "revoked",
         "classification": None, "reason": None, "comment": "gone", "payload": {"end_date": end}}])
    r = TestClient(app, headers={"Authorization": "Bearer tok-alice"}).get(f"/campaigns/{cid}/items/0000001")
    assert r.status_code == 200, r.text[:300]
    assert "out of range" in r.text


def test_bulk_triage_selection_is_capped_like_matching(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    from pipeline.review.service import BULK_MAX

    app, sink = make_app()
    alice = Client(app, "alice")
    too_many = {f"evt-{i}/AG-ESC-003": 0 for i in range(BULK_MAX + 1)}
    sink.queries.clear()
    r = alice.post("/api/findings/bulk", {"action": "acknowledge", "selection": too_many})
    assert r.status_code == 422, r.text[:300]
    # The form's selection is bounded before the handler: Starlette parses at most 1,000 form fields.
    r = alice.form("/queue/bulk", {"action": "acknowledge", "sel": [f"{fid}@0" for fid in too_many]})
    assert r.status_code == 400
    assert not sink.queries  # refused before a single store read
    # The service refuses it too, whoever calls it.
    from pipeline.review.model import Actor, ReviewError
    with pytest.raises(ReviewError, match=f"at most {BULK_MAX}"):
        app.state.ctx.service.bulk(Actor("alice", ("reviewer",)), "acknowledge", selection=too_many)
    assert not sink.queries


def test_bidi_and_invisible_characters_are_shown_not_obeyed(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app()
    agent = "agent-\u202egpj.exe"  # displays as agent-exe.jpg when the override is obeyed
    monkeypatch.setattr(app.state.ctx.store, "exceptions", lambda *_a, **_k: ([{
        "exception_id": "EXC-1", "version": 1, "state": "requested", "code": "AG-ESC-003", "agent_id": agent,
        "workflow_id": "wf\u2066x\u2069", "target_id": None, "entitlement": None,
        "justification": "ok\u200b\u202d\nsecond line", "requester": "alice", "approver": None,
        "requested_at": 1, "effective_at": None, "expires_at": 4_000_000_000_000, "ended_at": None,
        "updated_by": "alice", "updated_at": 1}], 1))
    page = TestClient(app, headers={"Authorization": "Bearer tok-alice"}).get("/exceptions", params={"agent": agent})
    assert page.status_code == 200
    shown = page.text.split('<form method="post" action="/exceptions"')[0]
    for raw in ("\u202e", "\u2066", "\u2069", "\u200b", "\u202d"):
        assert raw not in shown
    assert "agent-\\u202egpj.exe" in shown and "wf\\u2066x\\u2069" in shown
    assert "ok\\u200b\\u202d\nsecond line" in shown  # newlines are text, not hidden characters
    # A form value the server gets back (the agent of an exception request) keeps the exact id.
    assert f'value="{agent}"' in page.text


async def _asgi(app: FastAPI, method: str, path: str, chunks: list[bytes], headers: dict[str, str]
                ) -> tuple[int, int, bytes]:
    """Call the app at the ASGI level: (status, body chunks the app asked for, response body)."""
    asked = 0
    pending = list(chunks)

    async def receive() -> dict[str, Any]:
        nonlocal asked
        asked += 1
        if not pending:
            return {"type": "http.request", "body": b"", "more_body": False}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    out: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 8088), "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    return out["status"], asked, out["body"]


BIG = b'{"code": "AG-ESC-003", "agent_id": "a", "justification": "' + b"x" * (1 << 20) + b'"}'


@pytest.mark.parametrize("path", ["/api/exceptions", "/exceptions", "/api/findings/bulk", "/campaigns"])
def test_an_anonymous_write_is_refused_before_its_body_is_read(
        make_app: Callable[..., tuple[FastAPI, FakeSink]], path: str) -> None:
    import asyncio

    app, _ = make_app(review_max_body_bytes=8 << 20)
    ctype = "application/json" if path.startswith("/api/") else "application/x-www-form-urlencoded"
    status, asked, _ = asyncio.run(_asgi(app, "POST", path, [BIG[i:i + 65536] for i in range(0, len(BIG), 65536)],
                                         {"content-type": ctype, "content-length": str(len(BIG))}))
    assert status == (401 if path.startswith("/api/") else 303)
    assert asked == 0  # not one chunk of the body was read


@pytest.mark.parametrize("path", ["/campaigns", "/campaigns/CMP-000000000000", "/campaigns/CMP-000000000000/items/1",
                                  "/attributes", "/attributes/ARV-000000000000", "/queue", "/exceptions"])
def test_an_anonymous_page_reads_nothing_and_says_nothing(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                          path: str) -> None:
    """Who asks is settled before the store is read: an anonymous request for a campaign that does not exist
    was told so (400) where one that exists sent it to log in, and a campaign list ran its queries first."""
    from fastapi.testclient import TestClient

    app, sink = make_app()
    with TestClient(app) as client:
        r = client.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login"), (r.status_code, r.text[:200])
    assert sink.queries == []


def test_bodies_over_the_cap_are_413_before_being_read(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    import asyncio

    app, _ = make_app(review_max_body_bytes=64 * 1024)
    auth = {"authorization": "Bearer tok-alice", "content-type": "application/json"}
    # Declared too large: refused on the header alone.
    status, asked, _ = asyncio.run(_asgi(app, "POST", "/api/exceptions", [BIG],
                                         {**auth, "content-length": str(len(BIG))}))
    assert (status, asked) == (413, 0)
    # Streamed without a length: refused once the count passes the cap, not after the whole body.
    chunks = [BIG[i:i + 16384] for i in range(0, len(BIG), 16384)]
    status, asked, _ = asyncio.run(_asgi(app, "POST", "/api/exceptions", chunks, auth))
    assert status == 413 and asked <= 64 * 1024 // 16384 + 1 < len(chunks)
    # Under the cap the request goes on to the handler (here: the body is incomplete).
    small = b'{"code": "AG-ESC-003"}'
    status, _, _ = asyncio.run(_asgi(app, "POST", "/api/exceptions", [small],
                                     {**auth, "content-length": str(len(small))}))
    assert status == 422  # validated by the route, as before


def _login(app: FastAPI) -> tuple[TestClient, str, str]:
    """A browser signed in through the login form: (client, its session cookie, its CSRF token)."""
    browser = TestClient(app)
    r = browser.post("/login", data={"token": "tok-alice"}, follow_redirects=False)
    assert r.status_code == 303
    assert "max-age=3600" in r.headers["set-cookie"].lower()
    cookie = browser.cookies["agentgov_session"]
    return browser, cookie, browser.get("/api/me").json()["csrf_token"]


def test_logout_ends_the_session_even_for_a_copied_cookie(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    app, _ = make_app(review_session_max_age_seconds=3600)
    browser, cookie, csrf = _login(app)
    thief = TestClient(app, cookies={"agentgov_session": cookie})
    assert thief.get("/api/me").status_code == 200
    assert browser.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert thief.get("/api/me").status_code == 401
    r = thief.post("/api/exceptions", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 401
    # A new login is a new session and works.
    _, _, csrf2 = _login(app)
    assert csrf2 != csrf


def test_sessions_expire_after_the_max_age(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import time as real_time

    app, _ = make_app(review_session_max_age_seconds=3600)
    _, cookie, _ = _login(app)
    thief = TestClient(app, cookies={"agentgov_session": cookie})
    assert thief.get("/api/me").status_code == 200
    later = real_time.time() + 3601
    monkeypatch.setattr("pipeline.review.auth.time.time", lambda: later)
    assert thief.get("/api/me").status_code == 401


def test_the_csrf_token_is_bound_to_the_session(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    app, _ = make_app(review_session_max_age_seconds=3600)
    _, _, csrf1 = _login(app)
    second, _, csrf2 = _login(app)
    assert csrf1 != csrf2
    # The other session's token (same user) is refused; the session's own one passes the CSRF check.
    r = second.post("/exceptions", data={"csrf_token": csrf1, "code": "AG-ESC-003", "agent_id": "a",
                                         "justification": "j", "expires_at": "2000-01-01"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.text
    r = second.post("/exceptions", data={"csrf_token": csrf2, "code": "AG-ESC-003", "agent_id": "a",
                                         "justification": "j", "expires_at": "2000-01-01"}, follow_redirects=False)
    assert r.status_code == 400 and "future" in r.text


@pytest.mark.parametrize("owner", ["bob", "alcie"])  # an approver without the reviewer role; a typo
def test_a_campaign_owner_must_be_a_known_reviewer(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                    owner: str) -> None:
    app, sink = make_app()
    rita = Client(app, "rita")
    sink.queries.clear()
    due = datetime.now(UTC) + timedelta(days=30)
    r = rita.post("/api/campaigns", {"name": "Q4", "owner": owner, "due_at": due.isoformat()})
    assert r.status_code == 400 and "not a known user with the reviewer role" in r.json()["error"]
    r = rita.form("/campaigns", {"name": "Q4", "owner": owner, "due": due.date().isoformat()})
    assert r.status_code == 400 and "not a known user with the reviewer role" in r.text
    assert not sink.queries  # refused before the scope is read


def test_an_item_is_reassigned_only_to_a_known_reviewer(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app()
    cid = "CMP-000000000002"
    monkeypatch.setattr(app.state.recert.store, "campaign", lambda _c: _campaign(cid))
    monkeypatch.setattr(app.state.recert.store, "item", lambda _i: _item(cid, state="pending", version=1))
    alice = Client(app, "alice")
    for target in ("bob", "nobody"):
        r = alice.post(f"/api/campaigns/{cid}/items/0000001", {"action": "reassign", "expected_version": 1,
                                                               "justification": "not mine", "reassign_to": target})
        assert r.status_code == 400 and "not a known user with the reviewer role" in r.json()["error"]


def test_proxy_mode_cannot_know_other_users_and_accepts_the_owner() -> None:
    from pipeline.review.auth import Authenticator

    auth = Authenticator(settings(review_auth="proxy"))
    assert auth.has_role("anyone", "reviewer") is None
    token = Authenticator(settings())
    assert token.has_role("alice", "reviewer") and token.has_role("bob", "reviewer") is False
    assert token.has_role("alcie", "reviewer") is False


def _finding(target: str) -> dict[str, Any]:
    return {"event_id": "evt-1", "code": "AG-ESC-003", "severity": "critical", "category": "risk", "message": "m",
            "evidence_fields": [], "refs": [], "related_event_ids": ["evt-0"], "run_id": "run-1",
            "agent_id": "agent-1", "target_id": target, "action": "grant_entitlement", "occurred_at": None,
            "scored_at": None, "governance_policy_version": "1", "exception_id": None, "exception_version": None,
            "occurred_at_ms": 1_700_000_000_000}


@pytest.mark.parametrize(("target", "approver", "principal"), [("alice", "mgr", None), ("u-9", "alice", None),
                                                              ("ALICE", "mgr", None), ("u-9", "mgr", "Alice")])
def test_nobody_triages_a_finding_about_their_own_access(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                        monkeypatch: pytest.MonkeyPatch, target: str,
                                                        approver: str, principal: str | None) -> None:
    """Alice is the target, the approver, or the principal the agent acted for, in any spelling."""
    app, sink = make_app()
    monkeypatch.setattr(app.state.ctx.store, "finding", lambda _e, _c: _finding(target))
    sink.answer = lambda sql, params: ([{"target_id": target, "approved_by": approver, "on_behalf_of": principal}]
                                       if "transitions" in sql and "evt-0" in params.get("ids", []) else None)
    alice = Client(app, "alice")
    for body in ({"action": "close", "expected_version": 0, "classification": "false_positive",
                  "reason": "expected_behaviour", "comment": "mine, fine"},
                 {"action": "acknowledge", "expected_version": 0}):
        r = alice.post("/api/findings/evt-1/AG-ESC-003/decisions", body)
        assert r.status_code == 403 and "separation of duties" in r.json()["error"], r.text
    r = alice.form("/findings/evt-1/AG-ESC-003", {"action": "close", "version": 0, "classification": "false_positive",
                                                  "reason": "expected_behaviour", "comment": "mine"})
    assert r.status_code == 403 and "separation of duties" in r.text


def test_recert_items_and_signoff_are_not_decided_by_the_holder(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = make_app()
    cid = "CMP-000000000003"
    store = app.state.recert.store
    monkeypatch.setattr(store, "campaign", lambda _c: _campaign(cid, owner="alice"))
    monkeypatch.setattr(store, "item", lambda _i: _item(cid, state="pending", version=1, target_id="alice"))
    monkeypatch.setattr(store, "item_counts", lambda _c=None: {cid: {"pending": 0, "certified": 1, "revoked": 0}})
    monkeypatch.setattr(store, "items", lambda _c, **kw: [_item(cid, target_id="alice")]
                        if kw.get("target") == "alice" else [])
    alice = Client(app, "alice")
    r = alice.post(f"/api/campaigns/{cid}/items/0000001", {"action": "certify", "expected_version": 1,
                                                           "justification": "I need it"})
    assert r.status_code == 403 and "separation of duties" in r.json()["error"]
    r = alice.post(f"/api/campaigns/{cid}/signoff", {"expected_version": 1, "comment": "done"})
    assert r.status_code == 403 and "separation of duties" in r.json()["error"]
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(app.state.recert, "_publish_many", lambda _key, records: published.extend(records))
    monkeypatch.setattr(app.state.ctx.service, "wait_stored", lambda *_a, **_k: None)
    rita = Client(app, "rita")  # an approver
    r = rita.post(f"/api/campaigns/{cid}/signoff", {"expected_version": 1, "comment": "reviewed with the owners"})
    assert r.status_code == 200, r.text
    assert [p["kind"] for p in published] == ["campaign.signoff"] and published[0]["actor"] == "rita"
    assert published[0]["comment"] == "reviewed with the owners"  # the attestation came in the body


def test_a_recert_item_is_not_certified_by_the_grants_approver(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The item's snapshot names the grant's human approver: certifying one's own approval attests nothing."""
    app, _ = make_app()
    cid = "CMP-000000000009"
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(app.state.recert.store, "campaign", lambda _c: _campaign(cid))
    monkeypatch.setattr(app.state.recert.store, "item", lambda _i: _item(cid, state="pending", version=1,
                                                                          approved_by="Alice"))
    monkeypatch.setattr(app.state.recert, "_publish_many", lambda _key, records: published.extend(records))
    monkeypatch.setattr(app.state.ctx.service, "wait_stored", lambda *_a, **_k: None)
    alice = Client(app, "alice")
    r = alice.post(f"/api/campaigns/{cid}/items/0000001", {"action": "certify", "expected_version": 1,
                                                           "justification": "approved it myself"})
    assert r.status_code == 403 and "you approved this grant" in r.json()["error"], r.text
    r = alice.post(f"/api/campaigns/{cid}/items/0000001", {"action": "reassign", "expected_version": 1,
                                                           "justification": "I approved it", "reassign_to": "rita"})
    assert r.status_code == 200, r.text
    assert [p["kind"] for p in published] == ["campaign.reassign"]


def test_the_signoff_attestation_travels_in_the_body_not_the_url(make_app: Callable[..., tuple[FastAPI, FakeSink]]
                                                                 ) -> None:
    """A query string lands in access logs; the attestation is the signer's words about the campaign."""
    app, _ = make_app()
    op = TestClient(app).get("/openapi.json").json()["paths"]["/api/campaigns/{cid}/signoff"]["post"]
    assert [p["name"] for p in op.get("parameters", [])] == ["cid"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/Signoff")
    r = Client(app, "rita").post("/api/campaigns/CMP-000000000003/signoff?expected_version=1&comment=done")
    assert r.status_code == 422  # no body: the old URL form is refused, not half-read


def test_the_session_cookie_is_secure_when_tls_ends_at_a_proxy(make_app: Callable[..., tuple[FastAPI, FakeSink]]
                                                               ) -> None:
    def login(app: FastAPI, base: str) -> str:
        r = TestClient(app, base_url=base).post("/login", data={"token": "tok-alice"}, follow_redirects=False)
        assert r.status_code == 303
        return str(r.headers["set-cookie"]).lower()

    plain, _ = make_app()
    assert "secure" not in login(plain, "http://testserver")
    assert "; secure" in login(plain, "https://testserver")  # the app itself on TLS
    behind_tls, _ = make_app(review_cookie_secure=True)
    cookie = login(behind_tls, "http://testserver")  # TLS ended at the proxy: the app sees http
    assert "; secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def _scrape_queries(app: FastAPI, sink: FakeSink, scrapes: int) -> int:
    before = len(sink.queries)
    anonymous = TestClient(app)
    for _ in range(scrapes):
        r = anonymous.get("/metrics")
        assert r.status_code == 200 and "agentgov_review_open_findings" in r.text
    return len(sink.queries) - before


def test_metrics_scrapes_read_the_store_at_most_once_per_interval(
        make_app: Callable[..., tuple[FastAPI, FakeSink]], monkeypatch: pytest.MonkeyPatch) -> None:
    app, sink = make_app(review_metrics_refresh_seconds=15)
    one_read = _scrape_queries(app, sink, 1)
    assert one_read >= 2  # open findings and exception counts, at least
    assert _scrape_queries(app, sink, 50) == 0  # anyone can scrape; the store does not see it
    clock = time.monotonic() + 16
    monkeypatch.setattr("pipeline.review.app.time.monotonic", lambda: clock)
    assert _scrape_queries(app, sink, 3) == one_read  # the interval passed: one read, then cached again
    every, every_sink = make_app(review_metrics_refresh_seconds=0)
    assert _scrape_queries(every, every_sink, 3) == 3 * _scrape_queries(every, every_sink, 1)


def _exception_row(xid: str, state: str, **kw: Any) -> dict[str, Any]:
    t = datetime(2026, 12, 1, tzinfo=UTC)
    row = {"exception_id": xid, "version": 2 if state == "active" else 1, "state": state, "code": "AG-ESC-003",
           "agent_id": "agent-1", "workflow_id": None, "target_id": None, "entitlement": None,
           "justification": "batch job", "requester": "rita", "approver": "bob" if state == "active" else None,
           "requested_at": t, "effective_at": t if state == "active" else None, "expires_at": t + timedelta(days=60),
           "ended_at": None, "updated_by": "bob", "updated_at": t}
    row.update(kw)
    return row


def test_exception_lists_are_paged_and_filtered_in_the_store(make_app: Callable[..., tuple[FastAPI, FakeSink]]
                                                             ) -> None:
    app, sink = make_app()
    asked: list[dict[str, Any]] = []

    def answer(sql: str, params: dict[str, Any]) -> list[dict[str, Any]] | None:
        if "total_rows" in sql and "exceptions" in sql:
            asked.append(params)
            return [dict(_exception_row("X-1", "active"), total_rows=130)]
        return None

    sink.answer = answer
    alice = Client(app, "alice")
    doc = alice.get("/api/exceptions", params={"status": "active", "limit": 20, "offset": 40}).json()
    assert doc["total"] == 130 and [e["status"] for e in doc["exceptions"]] == ["active"]
    assert (asked[-1]["status"], asked[-1]["limit"], asked[-1]["offset"]) == ("active", 20, 40)
    assert alice.get("/api/exceptions", params={"limit": 501}).status_code == 422  # a page is bounded
    assert alice.get("/api/exceptions", params={"status": "all"}).status_code == 422
    page = alice.get("/exceptions", params={"status": "active", "page": 2})
    assert page.status_code == 200 and (asked[-1]["limit"], asked[-1]["offset"]) == (50, 50)
    assert "Page 2 of 3" in page.text and 'id="x-prev"' in page.text and 'id="x-next"' in page.text
    assert 'id="x-total">130 exceptions' in page.text
    bad = alice.get("/exceptions", params={"status": "<b>x</b>"})
    assert bad.status_code == 400 and "unknown exception status" in bad.text and "<b>x</b>" not in bad.text


def test_ending_an_exception_needs_a_comment_from_the_page(make_app: Callable[..., tuple[FastAPI, FakeSink]]
                                                          ) -> None:
    app, sink = make_app()
    published: list[str] = []
    app.state.ctx.service._publish = lambda name, _t, _k, _r: published.append(name)
    sink.answer = lambda sql, params: ([_exception_row("X-1", "active")]
                                       if "exceptions" in sql and params.get("x") == "X-1" else None)
    bob = Client(app, "bob")
    page = bob.get("/exceptions/X-1")
    assert page.status_code == 200 and 'id="x-comment"' in page.text and 'id="x-revoke"' in page.text
    r = bob.form("/exceptions/X-1", {"action": "revoke", "version": "2", "comment": "  "})
    assert r.status_code == 400 and "revoke needs a comment saying why" in r.text
    assert published == []  # nothing was decided


def test_export_pages_carry_a_next_link_and_refuse_a_forged_cursor(
        make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    from pipeline.review.store import ExportCursor

    app, sink = make_app()
    t = datetime(2026, 12, 1, 12, 0, 0, 123000)
    sink.answer = lambda sql, params: ([{"decision_id": f"d{i}", "subject_id": f"s{i}", "subject_version": 1,
                                         "decided_at": t, "kind": "finding.close"} for i in range(3)][:params["n"]]
                                       if "decisions" in sql else None)
    alice = Client(app, "alice")
    r = alice.get("/api/export", params={"since": "2026-12-01T00:00:00Z", "limit": 2})
    assert r.status_code == 200 and [d["subject_id"] for d in r.json()] == ["s0", "s1"]
    cursor = ExportCursor.parse(r.headers["x-next-cursor"])
    assert (cursor.at, cursor.rank, cursor.key, cursor.version) == (t, 0, "s1", 1)
    assert f"after={r.headers['x-next-cursor']}" in r.headers["link"] and r.headers["link"].endswith('rel="next"')
    for forged in ("", "!!!", "WyJ4IiwxLCJ5IiwxXQ", ExportCursor(t, 7, "k", 1).token()):
        bad = alice.get("/api/export", params={"since": "2026-12-01T00:00:00Z", "after": forged})
        assert bad.status_code == 400 and "not an export cursor" in bad.json()["error"], (forged, bad.text)
    last = alice.get("/api/export", params={"since": "2026-12-01T00:00:00Z", "limit": 3})
    assert len(last.json()) == 3 and "link" not in last.headers  # all there is: no next page to ask for
    assert alice.get("/api/export", params={"since": "2026-12-01T00:00:00Z", "limit": 10_001}).status_code == 422


def test_a_tampered_cookie_or_csrf_token_with_non_ascii_is_refused_not_500(
        make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    from pipeline.review.auth import SESSION_COOKIE

    app, _ = make_app(review_session_max_age_seconds=3600)
    http, cookie, _csrf = _login(app)
    forged = cookie.strip('"')[:-1] + "\u00e9"
    # Sent as raw latin-1 bytes, as a client may: Starlette decodes headers as latin-1.
    r = TestClient(app).get("/api/me", headers={"Cookie": f"{SESSION_COOKIE}={forged}".encode("latin-1")})
    assert r.status_code == 401
    r = http.post("/api/findings/e/AG-ESC-003/decisions", json={"action": "acknowledge", "expected_version": 0},
                  headers={"X-CSRF-Token": "\u00e9".encode("latin-1")})
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    alice = Client(app, "alice")
    r = alice.form("/campaigns", {"csrf_token": "t\u00f6ken", "name": "n", "owner": "alice", "due": "2030-01-01"})
    assert r.status_code == 403


@pytest.mark.parametrize("digits", ["\u00b2", "\u0663", "1\u0663", pytest.param("9" * 5000, id="5000-digits"),
                                    pytest.param("1" * 19, id="19-digits")])
def test_numbers_from_users_are_ascii_digits_only(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                  digits: str) -> None:
    """Only ASCII digits, and at most 18 of them: ``int`` refuses more than 4,300 digits (a 500 before)."""
    app, _ = make_app()
    alice = Client(app, "alice")
    r = alice.form("/campaigns", {"name": "n", "owner": "alice", "due": "2030-01-01", "within_days": digits})
    assert r.status_code == 400 and "whole number" in r.text
    r = alice.form("/queue/bulk", {"action": "acknowledge", "sel": f"e/AG-ESC-003@{digits}"})
    assert r.status_code == 400 and "bad selection" in r.text
    r = alice.form("/campaigns/CMP-x/bulk", {"action": "revoke", "sel": f"CMP-x/1@{digits}"})
    assert r.status_code == 400 and "bad selection" in r.text
    r = alice.post(f"/api/campaigns/CMP-x/items/{digits}", {"action": "certify", "expected_version": 1,
                                                              "justification": "x"})
    assert r.status_code == 400 and "not a campaign item id" in r.json()["error"]
    r = alice.get("/api/campaigns/CMP-x/items", params={"after": f"CMP-x/{digits}"})
    assert r.status_code == 400 and "not a campaign item id" in r.json()["error"]
    assert len(r.json()["error"]) < 200  # quotes what was sent, not all of it
    r = alice.form(f"/campaigns/CMP-x/items/{digits}", {"action": "certify", "version": "1", "justification": "x"})
    assert r.status_code == 400 and "not a campaign item id" in r.text
    r = alice.get("/queue", params={"max_age_hours": digits})  # a float: 19 digits are a number, out of range
    assert r.status_code == 400 and ("age must be a number of hours" in r.text or "age out of range" in r.text)


def test_an_export_cursor_out_of_the_stores_range_is_refused(make_app: Callable[..., tuple[FastAPI, FakeSink]]
                                                             ) -> None:
    import base64
    import json

    app, sink = make_app()
    alice = Client(app, "alice")
    for at in ("0001-01-01T00:00:00.000", "9999-12-31T23:59:59.000", "1969-12-31T23:59:59.000"):
        token = base64.urlsafe_b64encode(json.dumps([at, 0, "k", 1]).encode()).decode().rstrip("=")
        r = alice.get("/api/export", params={"since": "2026-12-01T00:00:00Z", "after": token})
        assert r.status_code == 400 and "not an export cursor" in r.json()["error"], (at, r.text)
    assert not [q for q in sink.queries if "decisions" in q]  # refused before the store was asked


def test_a_deeply_nested_export_cursor_is_refused_not_500(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    """json.loads raises RecursionError on 1,500 nested brackets: it was a 500."""
    import base64

    app, _ = make_app()
    token = base64.urlsafe_b64encode(b"[" * 1500).decode().rstrip("=")
    r = Client(app, "alice").get("/api/export", params={"since": "2026-12-01T00:00:00Z", "after": token})
    assert r.status_code == 400 and "not an export cursor" in r.json()["error"]


def test_the_exception_form_and_api_refuse_the_same_scopes(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    app, _ = make_app()
    published: list[str] = []
    app.state.ctx.service._publish = lambda name, _t, _k, _r: published.append(name)
    alice = Client(app, "alice")
    expires = (datetime.now(UTC) + timedelta(days=7)).isoformat()
    for agent, status, error in (("a" * 300_000, 400, "agent longer than 256"),
                                 ("agent-\u202egpj.exe", 400, "invisible character")):
        r = alice.form("/exceptions", {"code": "AG-ESC-003", "agent_id": agent, "justification": "j",
                                       "expires_at": expires})
        assert r.status_code == status and error in r.text
    r = alice.post("/api/exceptions", {"code": "AG-ESC-003", "agent_id": "agent-\u202egpj.exe", "justification": "j",
                                       "expires_at": expires})
    assert r.status_code == 400 and "invisible character (\\u202e)" in r.json()["error"]
    assert published == []


def test_failed_logins_are_logged_counted_and_throttled_per_address(
        make_app: Callable[..., tuple[FastAPI, FakeSink]], caplog: pytest.LogCaptureFixture) -> None:
    app, _ = make_app(review_login_max_failures=3, review_login_window_seconds=60)
    http = TestClient(app)
    caplog.set_level("WARNING", logger="pipeline.review.app")
    assert http.post("/login", data={"token": "guess-1"}).status_code == 401
    for guess in ("guess-2", "guess-3"):
        assert http.get("/api/me", headers={"Authorization": f"Bearer {guess}"}).status_code == 401
    # The address is out of tries: even the right token is not checked until the window passes.
    for r in (http.get("/api/me", headers={"Authorization": "Bearer tok-alice"}),
              http.post("/login", data={"token": "tok-alice"}, follow_redirects=False)):
        assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 60, r.text
        assert "too many failed logins" in r.json()["error"]
    assert TestClient(app).get("/healthz").status_code == 200  # nothing else is refused
    failed = [r for r in caplog.records if r.getMessage() == "failed login"]
    assert [r.kv["via"] for r in failed] == ["form", "bearer", "bearer"]  # type: ignore[attr-defined]
    assert failed[-1].kv["throttled"] is True  # type: ignore[attr-defined]
    assert not any("guess" in str(r.__dict__) for r in failed)  # the tokens tried are never logged
    metrics = app.state.ctx.metrics.registry
    assert metrics.get_sample_value("agentgov_review_login_failures_total", {"via": "form"}) == 1
    assert metrics.get_sample_value("agentgov_review_login_failures_total", {"via": "bearer"}) == 2


def test_behind_a_trusted_proxy_failed_logins_are_held_against_the_forwarded_client(
        make_app: Callable[..., tuple[FastAPI, FakeSink]], caplog: pytest.LogCaptureFixture) -> None:
    """Token mode behind a TLS-ending proxy: every request comes from the proxy's address, so one client's
    wrong tokens locked every reviewer out. With ``review_client_address_header`` the throttle keys on the
    rightmost forwarded address that is not a trusted proxy; entries left of it (the client's own) are not
    read, and the header from an untrusted peer is ignored."""
    app, _ = make_app(review_login_max_failures=2, review_login_window_seconds=60,
                      review_client_address_header="X-Forwarded-For",
                      review_trusted_proxies=["10.0.0.0/24"])
    caplog.set_level("WARNING", logger="pipeline.review.app")
    proxy = TestClient(app, client=("10.0.0.2", 40000))

    def bearer(token: str, forwarded: str) -> int:
        return proxy.get("/api/me", headers={"Authorization": f"Bearer {token}",
                                             "X-Forwarded-For": forwarded}).status_code

    # The attacker rotates the address it claims; the proxy appends the one it saw, behind a second proxy hop.
    assert [bearer("guess", f"192.0.2.{i}, 203.0.113.9, 10.0.0.7") for i in range(3)] == [401, 401, 429]
    assert bearer("tok-alice", "203.0.113.9") == 429  # the attacker's address is out of tries
    assert bearer("tok-alice", "198.51.100.4") == 200  # another reviewer behind the same proxy is not
    assert {r.kv["client"] for r in caplog.records if r.getMessage() == "failed login"} == {  # type: ignore[attr-defined]
        "203.0.113.9"}
    # From a peer that is not a trusted proxy the header is the client's own word: the peer is the address.
    direct = TestClient(app, client=("198.51.100.77", 40000))
    for i in range(2):
        direct.get("/api/me", headers={"Authorization": "Bearer guess", "X-Forwarded-For": f"192.0.2.{50 + i}"})
    assert direct.get("/api/me", headers={"Authorization": "Bearer tok-alice"}).status_code == 429
    auth = app.state.ctx.auth
    assert auth.client_address("10.0.0.2", {"x-forwarded-for": "junk, 10.0.0.9"}) == "10.0.0.2"
    assert auth.client_address("10.0.0.2", {}) == "10.0.0.2"
    assert auth.client_address("10.0.0.2", {"x-forwarded-for": "2001:db8::1"}) == "2001:db8::1"


def test_a_burst_of_wrong_tokens_at_the_login_form_checks_at_most_max_failures(
        make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    """The form's token is checked in the thread pool, after LoginThrottle let the request through: counting
    the failure there let every request of a concurrent burst pass the check (~50 of 400 against a limit of
    3). The throttle now counts each attempt as it lets it through; a right token gives it back."""
    import asyncio

    import httpx

    app, _ = make_app(review_login_max_failures=3, review_login_window_seconds=300)
    auth, checked = app.state.ctx.auth, []
    real_login = auth.login

    def slow_login(token: str) -> Any:
        checked.append(token)
        time.sleep(0.02)  # a slower check widens the window between the throttle and the count
        return real_login(token)

    auth.login = slow_login

    async def burst() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            rs = await asyncio.gather(*(http.post("/login", data={"token": f"wrong-{i}"}) for i in range(60)))
        return [r.status_code for r in rs]

    statuses = asyncio.run(burst())
    assert len(checked) == 3 and sorted(statuses) == [401] * 3 + [429] * 57
    assert app.state.ctx.throttle.failures("127.0.0.1", time.monotonic()) == 3


def test_a_right_token_gives_its_login_attempt_back(make_app: Callable[..., tuple[FastAPI, FakeSink]]) -> None:
    app, _ = make_app(review_login_max_failures=2, review_login_window_seconds=60)
    http = TestClient(app)
    for _ in range(5):  # signing in, by form or bearer, counts nothing against the address
        assert http.post("/login", data={"token": "tok-alice"}, follow_redirects=False).status_code == 303
        assert http.get("/api/me", headers={"Authorization": "Bearer tok-rita"}).status_code == 200
    assert len(app.state.ctx.throttle) == 0
    assert http.post("/login", data={"token": "guess"}).status_code == 401
    assert app.state.ctx.throttle.failures("testclient", time.monotonic()) == 1  # counted once


def _requested_exception(**kw: Any) -> dict[str, Any]:
    """An exception as ``ReviewStore.exception`` returns it (times in ms): requested by alice."""
    row = {"exception_id": "EXC-1", "version": 1, "state": "requested", "code": "AG-ESC-003", "agent_id": "agent-1",
           "workflow_id": None, "target_id": None, "entitlement": None, "justification": "j", "requester": "alice",
           "approver": None, "requested_at": 1, "effective_at": None, "expires_at": 4_000_000_000_000,
           "ended_at": None, "updated_by": "alice", "updated_at": 1}
    row.update(kw)
    return row


def test_a_broker_failure_is_a_503_that_says_nothing_was_applied(make_app: Callable[..., tuple[FastAPI, FakeSink]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The approval's decision is published first: when it fails, no RiskException went out (scorers would
    have acted on an approval no decision records), and the answer is a 503 to retry, not a bare 500."""
    from pipeline.errors import PublishError

    app, _ = make_app()
    published: list[str] = []

    def publish(name: str, topic: str, _key: str, _record: dict[str, Any]) -> None:
        if name == "review_decision":
            raise PublishError("broker gone", topic=topic)
        published.append(name)

    monkeypatch.setattr(app.state.ctx.service, "_publish", publish)
    monkeypatch.setattr(app.state.ctx.store, "exception", lambda _x: _requested_exception())
    bob = Client(app, "bob")
    r = bob.post("/api/exceptions/EXC-1/decisions", {"action": "approve", "expected_version": 1})
    assert r.status_code == 503 and "not applied; retry" in r.json()["error"], r.text
    r = bob.form("/exceptions/EXC-1", {"action": "approve", "version": "1"})
    assert r.status_code == 503 and "not applied; retry" in r.text
    assert published == []


def test_every_write_path_waits_for_a_decision_still_being_stored(
        make_app: Callable[..., tuple[FastAPI, FakeSink]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The store never shows the first decision (the writer is behind): the retry, and another reviewer's
    decision at the same version, are refused with 503 instead of publishing a second decision at it."""
    app, _ = make_app()
    cid = "CMP-000000000005"
    published: list[tuple[str, int]] = []
    monkeypatch.setattr(app.state.ctx.service, "_publish",
                        lambda name, _t, _k, rec: published.append((name, rec.get("subject_version", 0))))
    monkeypatch.setattr(app.state.recert, "_publish_many",
                        lambda _key, records: published.extend((r["kind"], r["subject_version"]) for r in records))
    monkeypatch.setattr(app.state.recert.store, "campaign", lambda _c: _campaign(cid))
    monkeypatch.setattr(app.state.recert.store, "item", lambda _i: _item(cid, state="pending", version=1,
                                                                          recommendation="certify"))
    monkeypatch.setattr(app.state.ctx.store, "exception", lambda _x: _requested_exception())
    alice, rita, bob = Client(app, "alice"), Client(app, "rita"), Client(app, "bob")
    for path, body, other, other_body in (
            (f"/api/campaigns/{cid}/items/0000001", {"action": "certify", "expected_version": 1, "justification": "ok"},
             alice, {"action": "revoke", "expected_version": 1, "justification": "no"}),
            ("/api/exceptions/EXC-1/decisions", {"action": "approve", "expected_version": 1},
             rita, {"action": "reject", "expected_version": 1, "comment": "no"})):
        first = bob if "exceptions" in path else alice
        del published[:]
        r = first.post(path, body)
        assert r.status_code == 503 and "not yet stored" in r.json()["error"], r.text
        n = len(published)
        assert first.post(path, body).status_code == 503
        r = other.post(path, other_body)
        assert r.status_code == 503 and "still being stored" in r.json()["error"], r.text
        assert len(published) == n, path  # refused, never published
