"""Resilience drills: consumer processes as restartable slots, ``kill -9``, and store reads from outside.

A :class:`Slot` is one supervised process position (``scorer-0``, ``writer``): it can be killed with
SIGKILL or SIGTERM and started again with the same settings and the same ``instance_id``, which is what a
container orchestrator does. :func:`query_store` reads a chdb store from a short-lived subprocess,
because chdb serves one data path per process and the drill's own process may already hold another.

Example::

    env = settings_env(settings)
    writer = Slot("writer", "consumers.writer", env, log_dir).start()
    writer.kill()                       # SIGKILL, mid-batch
    writer.start()                      # same slot, same settings
    rows = query_store(settings, "SELECT count() AS n FROM {db}.transitions FINAL")
    store = read_store(settings)        # counts, raw vs FINAL, findings per code, repeated ids, cross-run findings
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.process import ChildProcess
from pipeline.settings import ENV_PREFIX, Settings


class Slot:
    """One restartable consumer process (``python -m <module>``) with a stable ``instance_id``."""

    def __init__(self, name: str, module: str, env: dict[str, str], log_dir: Path | None = None,
                 metrics_port: int = 0) -> None:
        self.name = name
        self.module = module
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self.env.update(env)
        self.env[ENV_PREFIX + "INSTANCE_ID"] = name
        self.env[ENV_PREFIX + "METRICS_PORT"] = str(metrics_port)
        self.log_dir = log_dir
        self.proc = ChildProcess([sys.executable, "-m", module], env=self.env,
                                 log_path=log_dir / f"{name}.log" if log_dir else None)
        self.kills = 0

    @property
    def starts(self) -> int:
        return self.proc.starts

    def start(self) -> Slot:
        self.proc.start()
        return self

    def alive(self) -> bool:
        return self.proc.alive()

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye (a crash, an OOM kill, a lost node)."""
        if self.proc.kill():
            self.kills += 1

    def terminate(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        return self.proc.stop(grace=timeout)


_QUERY_SCRIPT = """
import json, sys
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
sink = ClickHouseSink.connect(Settings.load())
out = [sink.query(sql) for sql in json.load(sys.stdin)]
json.dump(out, sys.stdout, default=str)
"""


def query_store(settings: Settings, *sql: str, timeout: float = 120.0) -> list[list[dict[str, Any]]]:
    """Run read queries (``{db}`` is the database) against the settings' store in a fresh process.

    The store must not be open in another process at the time (chdb is single-process per path)."""
    from pipeline.runner import settings_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(settings_env(settings))
    env[ENV_PREFIX + "METRICS_PORT"] = "0"
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run([sys.executable, "-c", _QUERY_SCRIPT], input=json.dumps(list(sql)).encode(),
                              env=env, capture_output=True, timeout=timeout)
        if done.returncode == 0:
            result: list[list[dict[str, Any]]] = json.loads(done.stdout)
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"store query failed: {done.stderr.decode()[-2000:]}")
        time.sleep(1.0)


STORE_SQL = (
    "SELECT count() AS raw, uniqExact(event_id) AS ids FROM {db}.transitions",
    "SELECT count() AS final FROM {db}.transitions FINAL",
    "SELECT count() AS raw, uniqExact(event_id) AS ids FROM {db}.assessments",
    "SELECT count() AS final FROM {db}.assessments FINAL",
    "SELECT code, count() AS n FROM {db}.findings FINAL GROUP BY code ORDER BY code",
    "SELECT event_id FROM {db}.transitions FINAL",
    "SELECT event_id FROM {db}.transitions FINAL GROUP BY event_id HAVING count() > 1",
    "SELECT event_id FROM {db}.assessments FINAL GROUP BY event_id HAVING count() > 1",
    "SELECT finding_id, code FROM {db}.cross_run_findings FINAL",
    "SELECT count() AS raw FROM {db}.cross_run_findings",
)


def read_store(settings: Settings) -> dict[str, Any]:
    t_raw, t_final, a_raw, a_final, findings, ids, repeated, a_repeated, xrn, xrn_raw = query_store(
        settings, *STORE_SQL)
    return {
        "transitions_raw": t_raw[0]["raw"], "transitions_ids": t_raw[0]["ids"], "transitions": t_final[0]["final"],
        "assessments_raw": a_raw[0]["raw"], "assessments_ids": a_raw[0]["ids"], "assessments": a_final[0]["final"],
        "findings": {r["code"]: r["n"] for r in findings},
        "event_ids": {r["event_id"] for r in ids},
        "repeated_ids": {r["event_id"] for r in repeated},
        "repeated_assessment_ids": {r["event_id"] for r in a_repeated},
        "cross_run": [(r["finding_id"], r["code"]) for r in xrn],
        "cross_run_raw": xrn_raw[0]["raw"],
    }
