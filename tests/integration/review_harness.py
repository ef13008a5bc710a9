"""Shared pieces of the review tests: users, planted chains, and an app over a running pipeline."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from pipeline.broker import free_port
from pipeline.review.app import create_app
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.workload import run_step
from tests.support.helpers import wait_until

# user -> (token, roles)
USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("tok-alice", ["reviewer"]),
    "rita": ("tok-rita", ["reviewer", "approver"]),
    "bob": ("tok-bob", ["approver"]),
    "audrey": ("tok-audrey", ["auditor"]),
}


def review_overrides(**extra: Any) -> dict[str, Any]:
    return {
        "review_tokens": {u: t for u, (t, _) in USERS.items()},
        "review_users": {u: roles for u, (_, roles) in USERS.items()},
        "review_store_wait_seconds": 30.0,
        **extra,
    }


def transient_chain(agent: str, run: str) -> list[dict[str, Any]]:
    """Two events that each pass the per-event rules; together AG-ESC-003 (transient privilege), critical."""
    trig = ("mover", f"HR-{uuid.uuid4().hex[:6]}")
    return [
        run_step(run, 0, agent, "jml-provisioning", trig, "grant_entitlement", f"u-{run}", "aws", "role/Admin", 3,
                 resource__entitlement="aws-admin", decision__approved_by="mgr-eng"),
        run_step(run, 1, agent, "jml-provisioning", trig, "revoke_entitlement", f"u-{run}", "aws", "role/Admin", 3,
                 resource__entitlement="aws-admin"),
    ]


class Client:
    """A TestClient signed in with one user's token, sending the CSRF header on writes."""

    def __init__(self, app: FastAPI, user: str) -> None:
        self.user = user
        self.http = TestClient(app, headers={"Authorization": f"Bearer {USERS[user][0]}"})
        self.csrf = self.http.get("/api/me").json()["csrf_token"]

    def get(self, path: str, **kw: Any) -> Any:
        return self.http.get(path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> Any:
        return self.http.post(path, json=json, headers={"X-CSRF-Token": self.csrf}, **kw)


def make_app(pipe: Pipeline, settings: Settings) -> FastAPI:
    return create_app(pipe.settings, ClickHouseSink.connect(settings), registry=CollectorRegistry())


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on a free local port in a thread (for the browser); yields the base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 20, 0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def screenshot_dir(tmp_path: Path) -> Path:
    """Where a browser test saves its screenshots: ``$AGENTGOV_SCREENSHOT_DIR``, else the test's tmp dir."""
    out = Path(os.environ.get("AGENTGOV_SCREENSHOT_DIR", tmp_path / "screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out
