"""The newcomer's path, as a user types it: a small demo, then every command its summary and the README's
"Auditing" section print, run exactly as printed (through a shell, from the printed text); and every
failure a newcomer meets reads as one or two sentences with its own exit code and no traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker, free_port, free_port_run
from pipeline.drafts import draft
from pipeline.failures import Exit
from tests.support.helpers import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGOV_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `agentgov` is the installed entry point
    env.update({
        "AGENTGOV_EMBEDDED_BROKER_PORT": str(free_port()),
        "AGENTGOV_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'store'}",
        "AGENTGOV_STATE_DIR": str(tmp_path / "state"),
        "AGENTGOV_METRICS_PORT": str(free_port_run(8)),  # the run's children serve on the ports after it
        "AGENTGOV_BATCH_MAX_SECONDS": "0.1",
        "AGENTGOV_WRITER_BATCH_SECONDS": "0.2",
        **extra,
    })
    return env


def _sh(cmd: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def readme_auditing_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Auditing\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_demo_then_every_suggested_command_works_as_printed(tmp_path: Path) -> None:
    assert shutil.which("agentgov", path=str(BIN)), "the agentgov entry point is installed in the venv"
    env = _env(tmp_path)
    demo = _sh("agentgov demo --events 2000 --scorers 1", env, tmp_path, timeout=400)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "MISSED" not in demo.stdout and "caught  xrun_" in demo.stdout, demo.stdout  # cross-run cases too
    # not a terminal: plain periodic progress lines, the three stages in each
    progress = [line for line in demo.stderr.splitlines() if line.startswith("published ")]
    assert progress and all(" scored " in line and " stored " in line for line in progress)
    assert progress[-1].endswith("done"), progress[-1]
    assert "Traceback" not in demo.stderr

    tried = demo.stdout.split("Try next:\n", 1)[1].splitlines()
    steps = [line.strip() for line in tried if line.startswith("  agentgov ")]
    assert [s.split()[1] for s in steps] == ["trail", "export", "run"], demo.stdout

    trail = _sh(steps[0], env, tmp_path)
    assert trail.returncode == 0, trail.stderr
    assert "AG-ESC-001" in trail.stdout and "[3]" in trail.stdout

    export = _sh(steps[1], env, tmp_path)
    assert export.returncode == 0, export.stderr
    risky = (tmp_path / "risky.jsonl").read_text().splitlines()
    assert risky and all('"risk_score": ' in line for line in risky)
    assert re.search(r"exported [1-9]\d* assessments", export.stderr)

    for cmd in readme_auditing_commands():  # exactly as the README prints them
        res = _sh(cmd, env, tmp_path)
        assert res.returncode == 0, (cmd, res.stderr)
        if "--json" in cmd:
            assert '"code": "AG-ESC-001"' in res.stdout
        elif " trail " in f" {cmd} ":
            assert "AG-ESC-001" in res.stdout
        else:
            out = re.search(r"-o (\S+)", cmd)
            assert out is not None
            lines = (tmp_path / out[1]).read_text().splitlines()
            agent = re.search(r"--agent (\S+)", cmd)
            assert lines and all(agent is None or f'"agent_id": "{agent[1]}"' in line for line in lines), cmd

    url = re.search(r"http://\S+/metrics", steps[2])
    assert url is not None
    # Its log goes to a file: a pipe nobody reads while waiting fills (64 KB) and blocks every process of the
    # tree that logs, the run included, before it serves its metrics (a CI run failed so).
    log_path = tmp_path / "run.log"
    with log_path.open("w") as log_file:
        run = subprocess.Popen(["sh", "-c", f"exec {steps[2]}"], env=env, cwd=tmp_path, stderr=log_file, text=True)
        try:
            def up() -> bool:
                try:
                    body = urllib.request.urlopen(url[0], timeout=2).read().decode()
                except OSError:
                    return False
                return 'agentgov_process_up{role="writer"} 1.0' in body

            assert wait_until(up, 90), f"agentgov run did not serve its metrics: {log_path.read_text()[-3000:]}"
            # while `run` owns the embedded store, a reader is told so instead of failing in chdb
            locked = _sh(steps[0], env, tmp_path)
            assert locked.returncode == Exit.STORE_LOCKED and "open in another process" in locked.stderr
        finally:
            run.send_signal(signal.SIGTERM)
            run.wait(timeout=60)
    assert run.returncode == 0, log_path.read_text()[-2000:]


@pytest.fixture
def locked_store(tmp_path: Path) -> Iterator[Path]:
    """A chdb store held open by another process, as a running `agentgov run` holds it."""
    path = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, clickhouse_connect; "
         f"c = clickhouse_connect.get_client(dsn='chdb://{path}'); c.command('CREATE DATABASE IF NOT EXISTS x'); "
         "print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    yield path
    holder.kill()
    holder.wait()


def _bad_policy(tmp_path: Path) -> Path:
    bad = tmp_path / "bad.yaml"
    bad.write_text('version: "1"\nunknown_key: true\n')
    return bad


# (name, command, extra env (values formatted with tmp_path, policy, held), exit code, the sentence's words)
CASES = [
    ("store missing", "agentgov trail run-1", {"AGENTGOV_CLICKHOUSE_DSN": "chdb://{tmp_path}/nowhere"},
     Exit.STORE_MISSING, "no audit store at {tmp_path}/nowhere (database agentgov); run `agentgov run` or "
                         "`agentgov migrate`, or set AGENTGOV_CLICKHOUSE_DSN"),
    ("export, store missing", "agentgov export", {"AGENTGOV_CLICKHOUSE_DSN": "chdb://{tmp_path}/nowhere"},
     Exit.STORE_MISSING, "no audit store at"),
    ("store locked", "agentgov trail run-1", {"AGENTGOV_CLICKHOUSE_DSN": "chdb://{held}"},
     Exit.STORE_LOCKED, "is open in another process"),
    ("broker unreachable", "agentgov publish {policy}", {"AGENTGOV_EMBEDDED_BROKER_PORT": "{dead_port}"},
     Exit.BROKER, "cannot reach the broker at 127.0.0.1:{dead_port}"),
    ("policy invalid, check", "agentgov policy check {policy}", {}, Exit.POLICY, "unknown_key"),
    ("policy invalid, run", "agentgov run", {"AGENTGOV_POLICY_FILE": "{policy}"}, Exit.POLICY, "invalid policy"),
    ("metrics port taken", "agentgov run", {"AGENTGOV_METRICS_PORT": "{taken_port}"}, Exit.CONFIG,
     "cannot serve /metrics on 127.0.0.1:{taken_port}: Address already in use; is another `agentgov run` up?"),
    ("unknown variable", "agentgov rules", {"AGENTGOV_FOO": "1"}, Exit.CONFIG,
     "unknown setting in the environment: AGENTGOV_FOO"),
    ("misspelt variable", "agentgov migrate", {"AGENTGOV_KAFKA_BOOTSTARP": "h:9092"}, Exit.CONFIG,
     "AGENTGOV_KAFKA_BOOTSTARP (did you mean AGENTGOV_KAFKA_BOOTSTRAP?)"),
    ("invalid value", "agentgov trail run-1", {"AGENTGOV_TOPIC_PARTITIONS": "zero"}, Exit.CONFIG,
     "AGENTGOV_TOPIC_PARTITIONS"),
    ("rejected lines", "agentgov publish {policy}", {"AGENTGOV_KAFKA_BOOTSTRAP": "{broker}"}, Exit.INCOMPLETE,
     "accepted 0, rejected 2"),
    ("undelivered events", "agentgov publish {events}",
     {"AGENTGOV_KAFKA_BOOTSTRAP": "{broker}", "AGENTGOV_TOPIC_TRANSITIONS": "no such topic!"}, Exit.UNDELIVERED,
     "rejected 0, undelivered 2"),
]


@pytest.mark.parametrize(("name", "cmd", "extra", "code", "says"), CASES, ids=[c[0] for c in CASES])
def test_errors_read_as_sentences(tmp_path: Path, request: pytest.FixtureRequest, broker: EmbeddedBroker,
                                  name: str, cmd: str, extra: dict[str, str], code: Exit, says: str) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(draft(run_id="run-nc-1")) + "\n" + json.dumps(draft(run_id="run-nc-2")) + "\n")
    taken = socket.socket()
    request.addfinalizer(taken.close)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    values = {"tmp_path": tmp_path, "taken_port": taken.getsockname()[1], "policy": _bad_policy(tmp_path),
              "dead_port": free_port(), "events": events,
              "broker": broker.bootstrap,
              "held": request.getfixturevalue("locked_store") if "{held}" in str(extra) else ""}
    env = _env(tmp_path, **{k: v.format(**values) for k, v in extra.items()})
    res = _sh(cmd.format(**values), env, tmp_path, timeout=60)
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    output = res.stdout + res.stderr
    assert says.format(**values) in output
    assert "Traceback" not in output
    # log lines and the per-line reports of `publish` (file:line: ...) aside, one or two sentences
    told = [line for line in output.splitlines() if not line.startswith(("ts=", f"{values['policy']}:", f"{events}:"))]
    assert 1 <= len(told) <= 2, told


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = _env(tmp_path, AGENTGOV_CLICKHOUSE_DSN=f"chdb://{tmp_path}/nowhere")
    res = _sh("agentgov --debug trail run-1", env, tmp_path)
    assert res.returncode == Exit.STORE_MISSING and "Traceback" in res.stderr and "StoreMissing" in res.stderr
    res = _sh("agentgov trail run-1", {**env, "AGENTGOV_LOG_LEVEL": "debug"}, tmp_path)
    assert res.returncode == Exit.STORE_MISSING and "Traceback" in res.stderr


def test_demo_never_replaces_a_store_holding_other_data(tmp_path: Path) -> None:
    env = _env(tmp_path)
    assert _sh("agentgov migrate", env, tmp_path).returncode == 0
    store = env["AGENTGOV_CLICKHOUSE_DSN"]
    insert = subprocess.run(
        [sys.executable, "-c", "import clickhouse_connect; "
         f"c = clickhouse_connect.get_client(dsn='{store}'); "
         "c.command(\"INSERT INTO agentgov.transitions (event_id, run_id, occurred_at) "
         "VALUES (generateUUIDv4(), 'run-real', now64(3))\"); c.close()"],
        capture_output=True, text=True, timeout=60)
    assert insert.returncode == 0, insert.stderr
    res = _sh("agentgov demo --events 100 --scorers 1", env, tmp_path)
    assert res.returncode == Exit.CONFIG, res.stderr
    assert "holds 1 events that no demo wrote" in res.stderr and "Traceback" not in res.stderr
    trail = _sh("agentgov trail run-real", env, tmp_path)  # still there
    assert trail.returncode == 0 and "[0]" in trail.stdout, trail.stderr
