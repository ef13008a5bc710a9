"""The review workbench in a real headless Chromium (Debian's package, driven by Playwright; no download),
against the embedded pipeline carrying the demo's planted violations.

One pipeline, one browser, four scenarios in order: a reviewer triages an escalation chain; an auditor
cannot change anything; four-eyes exception approval, after which a matching event is stored as excepted
and does not page; after expiry the next matching event pages again. Screenshots go to
``$AGENTGOV_SCREENSHOT_DIR`` (default: the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import free_port
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.workload import Workload
from tests.support.helpers import scrape, wait_until

from .review_harness import USERS, make_app, review_overrides, screenshot_dir, served, transient_chain

pytestmark = pytest.mark.integration


def _sign_in(page: Any, base: str, user: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{base}/login")
    page.fill("input[name=token]", USERS[user][0])
    page.click("#signin")
    page.wait_for_url(f"{base}/queue")
    assert page.text_content("#whoami") == user


def _stored_finding(sink: ClickHouseSink, run: str) -> dict[str, Any] | None:
    rows = sink.query("SELECT event_id, code, exception_id, exception_version FROM {db}.findings FINAL "
                      "WHERE run_id = {r:String} AND code = 'AG-ESC-003'", {"r": run})
    return rows[0] if rows else None


def _chain_paged(port: int, run: str) -> bool:
    return any(name == "agentgov_escalation_chain_detected" and dict(labels).get("run_id") == run
               for (name, labels) in scrape(port))


def _metric(port: int, name: str, **labels: str) -> float:
    want = tuple(sorted(labels.items()))
    return sum(v for (n, ls), v in scrape(port).items() if n == name and all(x in ls for x in want))


def test_review_workbench_in_chromium(settings_factory: Callable[..., Settings],
                                      pipeline_factory: Callable[..., Pipeline],
                                      publisher_factory: Callable[..., TransitionPublisher], browser_page: Any,
                                      tmp_path: Path) -> None:
    page, shots = browser_page, screenshot_dir(tmp_path)
    settings = settings_factory(**review_overrides())
    scorer_port = free_port()
    pipe = pipeline_factory(settings, scorer_metrics_ports=[scorer_port])
    pub = publisher_factory(settings)
    for op in Workload(seed=7)._planted():
        op.publish(pub)
    pub.producer.flush(10)
    sink = ClickHouseSink.connect(settings)
    app = make_app(pipe, settings)

    with served(app) as base:
        # -- 1. reviewer finds the escalation chain, acknowledges, closes as true positive -------------
        _sign_in(page, base, "alice")
        wait_until(lambda: sink.query("SELECT count() AS n FROM {db}.findings WHERE code LIKE 'AG-ESC-%'")[0]["n"] >= 4)
        page.goto(f"{base}/queue")
        page.screenshot(path=str(shots / "review-queue.png"), full_page=True)
        page.goto(f"{base}/queue?agent=agent-jml-03&code=AG-ESC-003")
        rows = page.locator("tr.finding-row")
        assert rows.count() == 1 and "chain of 2 events" in rows.first.inner_text()
        rows.first.locator("a.finding-link").click()
        assert page.text_content("#state") == "new"
        assert page.locator("table.trail").count() >= 1  # the run trail, as `agentgov trail` shows it
        page.click("#acknowledge")
        assert page.text_content("#state") == "acknowledged"
        page.select_option("#classification", "true_positive")
        page.select_option("#reason", "confirmed_misuse")
        page.fill("#comment", "Admin granted and revoked within minutes; confirmed with IAM on-call.")
        page.click("#close")
        assert page.text_content("#state") == "closed"
        history = page.locator("#history tbody tr")
        assert history.count() == 2
        assert [history.nth(i).locator("td.who").inner_text() for i in range(2)] == ["alice", "alice"]
        assert "true_positive" in history.nth(1).inner_text() and "UTC" in history.nth(1).inner_text()
        page.screenshot(path=str(shots / "review-finding.png"), full_page=True)
        finding_url = page.url

        # -- 2. an auditor's session cannot change anything ------------------------------------------
        _sign_in(page, base, "audrey")
        assert page.is_visible("#readonly")
        assert page.locator("#bulk-apply").count() == 0
        assert page.locator("input[name=sel]:not([disabled])").count() == 0
        page.goto(finding_url)
        assert page.locator("#decide").count() == 0
        csrf = page.request.get(f"{base}/api/me").json()["csrf_token"]
        refused = page.request.post(f"{finding_url}", form={"action": "reopen", "version": "2", "csrf_token": csrf})
        assert refused.status == 403
        page.goto(f"{base}/exceptions")
        assert page.locator("#request-exception").count() == 0
        page.goto(finding_url)
        assert page.text_content("#state") == "closed"

        # -- 3. four-eyes exception; a matching event is excepted and does not page --------------------
        agent = f"agent-jml-batch-{uuid.uuid4().hex[:6]}"  # bound to jml-provisioning (AG-BND-005)
        expires = datetime.now(UTC) + timedelta(seconds=75)
        _sign_in(page, base, "rita")
        page.goto(f"{base}/exceptions")
        page.fill("#x-code", "AG-ESC-003")
        page.fill("#x-agent", agent)
        page.fill("#x-expires", expires.strftime("%Y-%m-%dT%H:%M:%S"))
        page.fill("#x-justification", "Nightly entitlement rotation job; ticket CHG-1234.")
        page.click("#x-submit")
        assert page.text_content("#x-status") == "requested"
        exception_url = page.url
        page.click("#x-approve")  # the requester tries to approve their own exception
        assert "four-eyes" in page.text_content("#error")
        page.goto(exception_url)
        assert page.text_content("#x-status") == "requested"
        _sign_in(page, base, "bob")
        page.goto(exception_url)
        page.click("#x-approve")
        assert page.text_content("#x-status") == "active"
        assert "bob" in page.text_content("#x-approver")
        # the scorer holds the approved version (not only the request) before the matching event is sent
        assert wait_until(lambda: _metric(scorer_port, "agentgov_exceptions_approved") >= 1, 30)

        excepted_run = f"run-exc-{uuid.uuid4().hex[:6]}"
        for d in transient_chain(agent, excepted_run):
            pub.publish(d)
        pub.producer.flush(10)
        stored = wait_until(lambda: _stored_finding(sink, excepted_run))
        assert stored and stored["exception_id"] == exception_url.rsplit("/", 1)[1] and stored["exception_version"] == 2
        assert _metric(scorer_port, "agentgov_findings_excepted_total", code="AG-ESC-003") == 1
        assert not _chain_paged(scorer_port, excepted_run)  # no page
        page.goto(f"{base}/queue?agent={agent}")
        assert page.locator("tr.finding-row").count() == 0  # not in the queue
        page.goto(exception_url)
        assert page.locator("#covered tbody tr").count() == 1 and "v2" in page.text_content("#covered")
        page.screenshot(path=str(shots / "review-exception.png"), full_page=True)

        # -- 4. after expiry the next matching event pages again --------------------------------------
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds() + 1))
        page.goto(exception_url)
        assert page.text_content("#x-status") == "expired"
        lapsed_run = f"run-lapsed-{uuid.uuid4().hex[:6]}"
        for d in transient_chain(agent, lapsed_run):
            pub.publish(d)
        pub.producer.flush(10)
        stored = wait_until(lambda: _stored_finding(sink, lapsed_run))
        assert stored and stored["exception_id"] is None
        assert wait_until(lambda: _chain_paged(scorer_port, lapsed_run), 20)
        page.goto(f"{base}/queue?agent={agent}")
        assert page.locator("tr.finding-row").count() == 1

    readme_shot = os.environ.get("AGENTGOV_README_SCREENSHOT")
    if readme_shot:
        shutil.copy(shots / "review-queue.png", readme_shot)
