"""The command line as a user drives it: run, publish (JSON lines), trail, export, policy check, rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.broker import free_port, free_port_run
from pipeline.drafts import draft
from tests.support.helpers import scrape, wait_until

pytestmark = pytest.mark.integration
AGENTGOV = [sys.executable, "-m", "pipeline.cli"]


def _env(tmp_path: Path, broker_port: int, metrics_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGOV_")}
    env.update({
        "AGENTGOV_EMBEDDED_BROKER_PORT": str(broker_port),
        "AGENTGOV_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'store'}",
        "AGENTGOV_STATE_DIR": str(tmp_path / "state"),
        "AGENTGOV_METRICS_PORT": str(metrics_port),
        "AGENTGOV_BATCH_MAX_SECONDS": "0.1",
        "AGENTGOV_WRITER_BATCH_SECONDS": "0.2",
    })
    return env


def _refused_port(run: subprocess.Popen[bytes], log_path: Path, metrics_port: int) -> bool:
    """Whether the run ended at start because a port it was given was taken meanwhile."""
    wait_until(lambda: run.poll() is not None or _up(metrics_port), 60)
    if run.poll() is None:
        return False
    return "Address already in use" in log_path.read_text()


def test_publish_jsonl_then_trail_and_export(tmp_path: Path) -> None:
    log_path = tmp_path / "run.log"  # not a pipe: one nobody reads fills and blocks the run's logging
    for _ in range(3):  # ports found free can be taken by a parallel test before the run binds them: new ones
        metrics_port = free_port_run(8)  # agentgov run serves its children's metrics on the ports after it
        env = _env(tmp_path, free_port(), metrics_port)
        run = subprocess.Popen([*AGENTGOV, "run", "--scorers", "1"], env=env, stderr=log_path.open("w"))
        if not _refused_port(run, log_path, metrics_port):
            break
    try:
        # the writer's /metrics comes up once broker, topics and migrations are ready
        assert wait_until(lambda: _up(metrics_port), 60), f"not up: {log_path.read_text()[-3000:]}"
        lines = [
            json.dumps(draft(run_id="run-cli-1", step=0)),
            "not json",
            json.dumps(draft(run_id="run-cli-1", step=1, action="assign_role",
                             **{"resource.resource_id": "role/Admin", "resource.privilege_tier": 3})),
            json.dumps(draft(**{"resource.privilege_tier": 5})),
            "",
            json.dumps(draft(run_id="run-cli-2", occurred_at="2026-11-28T10:00:00Z")),
            # a repeated key is ambiguous (parsers keep the first, the last or both): refused, not resolved
            json.dumps(draft(run_id="run-cli-3"))[:-1] + ', "run_id": "run-cli-4"}',
        ]
        jsonl = tmp_path / "events.jsonl"
        jsonl.write_text("\n".join(lines) + "\n")
        pub = subprocess.run([*AGENTGOV, "publish", str(jsonl)], env=env, capture_output=True, text=True,
                             timeout=60)
        assert pub.returncode == 1, pub.stderr
        assert "accepted 3, rejected 3" in pub.stdout
        assert f"{jsonl}:2: not JSON" in pub.stderr
        assert f"{jsonl}:4:" in pub.stderr and "resource.privilege_tier" in pub.stderr
        assert f"{jsonl}:7: invalid event: duplicate key 'run_id'" in pub.stderr

        def stored() -> bool:
            return scrape(metrics_port).get(("agentgov_sink_rows_total", (("table", "ingest"),)), 0) >= 3

        assert wait_until(stored, 60)
    finally:
        run.send_signal(signal.SIGTERM)
        run.wait(60)
    assert run.returncode == 0, log_path.read_text()[-2000:]

    trail = subprocess.run([*AGENTGOV, "trail", "run-cli-1"], env=env, capture_output=True, text=True, timeout=60)
    assert trail.returncode == 0, trail.stderr
    assert "[0]" in trail.stdout and "[1]" in trail.stdout
    assert "AG-AUTH-001" in trail.stdout and "policy iga-access-policy@7" in trail.stdout
    as_json = subprocess.run([*AGENTGOV, "trail", "run-cli-1", "--json"], env=env, capture_output=True, text=True,
                             timeout=60)
    steps = json.loads(as_json.stdout)
    assert [s["step"] for s in steps] == [0, 1]
    assert steps[1]["findings"][0]["code"] == "AG-AUTH-001"
    assert steps[1]["prev_event_hash"] == steps[0]["event_hash"]

    out = tmp_path / "export.jsonl"
    exp = subprocess.run([*AGENTGOV, "export", "--since", "2026-01-01", "--until", "2100-01-01", "-o", str(out)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert exp.returncode == 0, exp.stderr
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(docs) == 3
    assert {d["run_id"] for d in docs} == {"run-cli-1", "run-cli-2"}
    risky = [d for d in docs if d["risk_score"] > 0]
    assert risky and risky[0]["findings"][0]["code"] == "AG-AUTH-001"

    missing = subprocess.run([*AGENTGOV, "trail", "no-such-run"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "no such run" in missing.stdout


def _up(port: int) -> bool:
    try:
        return scrape(port).get(("agentgov_process_up", (("role", "writer"),)), 0) == 1
    except OSError:
        return False


def test_policy_check_and_rules(tmp_path: Path) -> None:
    ok = subprocess.run([*AGENTGOV, "policy", "check", "policies/default.yaml"], capture_output=True, text=True)
    assert ok.returncode == 0 and "version" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: \"1\"\nunknown_key: true\n")
    res = subprocess.run([*AGENTGOV, "policy", "check", str(bad)], capture_output=True, text=True)
    assert res.returncode == 4 and "unknown_key" in res.stderr  # Exit.POLICY
    rules = subprocess.run([*AGENTGOV, "rules"], capture_output=True, text=True)
    assert rules.returncode == 0 and "AG-AUTH-001" in rules.stdout


def test_unknown_setting_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "AGENTGOV_KAFKA_BOOTSTARP": "typo:9092"}
    res = subprocess.run([*AGENTGOV, "migrate"], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 3 and "AGENTGOV_KAFKA_BOOTSTARP" in res.stderr  # Exit.CONFIG
