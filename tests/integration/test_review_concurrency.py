"""The workbench under concurrent requests, served by uvicorn over the real pipeline and store.

A write blocks (store queries, the producer's flush, the wait until the decision is stored): it must run off
the event loop, or one long request (a bulk of thousands) holds up every other one, /healthz included. And
the writes must still be serialised: two decisions on one finding version give one success and one 409."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from tests.support.helpers import wait_until

from .review_harness import USERS, make_app, review_overrides, served, transient_chain

pytestmark = pytest.mark.integration

BULK = 2000  # each unknown id is a store query: several seconds of work in one request


def _client(base: str, user: str) -> httpx.Client:
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {USERS[user][0]}"}, timeout=600)
    http.headers["X-CSRF-Token"] = http.get("/api/me").json()["csrf_token"]
    return http


def test_a_long_write_leaves_other_requests_alone_and_writes_stay_serialised(
        settings_factory: Callable[..., Settings], pipeline_factory: Callable[..., Pipeline],
        publisher_factory: Callable[..., TransitionPublisher]) -> None:
    settings = settings_factory(**review_overrides())
    pipe = pipeline_factory(settings)
    agent, run = f"agent-conc-{uuid.uuid4().hex[:6]}", f"run-{uuid.uuid4().hex[:8]}"
    pub = publisher_factory(settings)
    for d in transient_chain(agent, run):
        pub.publish(d)
    pub.producer.flush(10)
    app = make_app(pipe, settings)
    with served(app) as base:
        alice, rita, bob = _client(base, "alice"), _client(base, "rita"), _client(base, "bob")
        rows = wait_until(lambda: alice.get("/api/findings", params={"agent": agent}).json()["findings"])
        path = f"/api/findings/{rows[0]['event_id']}/{rows[0]['code']}/decisions"

        # -- a slow write does not hold up a health check or another user's read -------------------------
        out: dict[str, Any] = {}

        def bulk() -> None:
            started = time.monotonic()
            out["bulk"] = alice.post("/api/findings/bulk", json={
                "action": "acknowledge", "selection": {f"nope-{i}/AG-ESC-003": 0 for i in range(BULK)}})
            out["seconds"] = time.monotonic() - started

        writer = threading.Thread(target=bulk)
        writer.start()
        time.sleep(1.0)  # the bulk is in its loop of store queries
        started = time.monotonic()
        health = httpx.get(f"{base}/healthz", timeout=600)
        health_s = time.monotonic() - started
        started = time.monotonic()
        me = bob.get("/api/me")
        me_s = time.monotonic() - started
        still_running = writer.is_alive()
        writer.join(600)
        assert out["bulk"].status_code == 200 and len(out["bulk"].json()["refused"]) == BULK
        assert health.status_code == 200 and health_s < 2.0, f"/healthz took {health_s:.1f} s during a write"
        assert me.status_code == 200 and me_s < 2.0, f"another user's read took {me_s:.1f} s during a write"
        assert still_running, f"the bulk took {out['seconds']:.1f} s, over before /healthz was asked"

        # -- two decisions on one version at once: one is stored, the other is a 409 ---------------------
        gate = threading.Barrier(2)
        answers: dict[str, httpx.Response] = {}

        def acknowledge(user: str, http: httpx.Client) -> None:
            gate.wait()
            answers[user] = http.post(path, json={"action": "acknowledge", "expected_version": 0})

        both = [threading.Thread(target=acknowledge, args=u) for u in (("alice", alice), ("rita", rita))]
        for t in both:
            t.start()
        for t in both:
            t.join(120)
        assert sorted(r.status_code for r in answers.values()) == [201, 409], {u: r.text for u, r in answers.items()}
        loser = next(r for r in answers.values() if r.status_code == 409).json()
        assert loser["current"]["state"] == "acknowledged" and loser["current"]["version"] == 1
        history = alice.get(path.removesuffix("/decisions")).json()["history"]
        assert [h["subject_version"] for h in history] == [1]  # one decision stored, not two at version 1


def test_an_attribute_review_is_proposed_once_even_by_two_at_once(
        settings_factory: Callable[..., Settings], pipeline_factory: Callable[..., Pipeline],
        publisher_factory: Callable[..., TransitionPublisher]) -> None:
    """open -> propose -> propose -> included -> propose -> included was possible: propose had no state check
    and read the review before taking the write lock."""
    settings = settings_factory(**review_overrides())
    pipe = pipeline_factory(settings)
    pub = publisher_factory(settings)
    for d in transient_chain(f"agent-attr-{uuid.uuid4().hex[:6]}", f"run-{uuid.uuid4().hex[:8]}"):
        pub.publish(d)
    pub.producer.flush(10)
    app = make_app(pipe, settings)
    with served(app) as base:
        alice, rita = _client(base, "alice"), _client(base, "rita")

        def form(http: httpx.Client, path: str, **data: Any) -> httpx.Response:
            return http.post(path, data={"csrf_token": http.headers["X-CSRF-Token"], **data},
                             headers={"Accept": "application/json"}, follow_redirects=False)

        def opened() -> str:
            # 400 "no input attributes recorded" until the writer has stored the chain's events
            r = wait_until(lambda: (lambda r: r if r.status_code == 303 else None)(
                form(alice, "/attributes", workflow="jml-provisioning")))
            rid = r.headers["location"].rsplit("/", 1)[1]
            name = alice.get(f"/api/attributes/{rid}").json()["rows"][0]["name"]
            decided = form(alice, f"/attributes/{rid}/decide", name=name, verdict="disallow", version="0",
                           justification="not needed for this workflow")
            assert decided.status_code == 303, decided.text
            return rid

        rid = opened()
        assert form(alice, f"/attributes/{rid}/propose").status_code == 303
        again = form(alice, f"/attributes/{rid}/propose")
        assert again.status_code == 409 and again.json()["error"] == "only an open review is proposed; this one is " \
                                                                    "proposed"
        assert alice.get(f"/api/attributes/{rid}").json()["version"] == 2

        # Two proposals of one open review at once: one is recorded, the other refused under the lock.
        rid = opened()
        gate = threading.Barrier(2)
        answers: list[httpx.Response] = []

        def propose(http: httpx.Client) -> None:
            gate.wait()
            answers.append(form(http, f"/attributes/{rid}/propose"))

        both = [threading.Thread(target=propose, args=(h,)) for h in (alice, rita)]
        for t in both:
            t.start()
        for t in both:
            t.join(120)
        assert sorted(r.status_code for r in answers) == [303, 409], [r.text for r in answers]
        rev = alice.get(f"/api/attributes/{rid}").json()
        assert rev["state"] == "proposed" and len(rev["proposals"]) == 1
