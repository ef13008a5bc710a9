"""The one subprocess supervisor (pipeline/process.py): log file, SIGTERM with grace then SIGKILL, exit
codes, restarts, the log's tail, and a line protocol over pipes."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from pipeline.process import ChildProcess

READY_THEN_TERM = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: (print("bye", flush=True), sys.exit(3)))
print("ready", flush=True)
time.sleep(60)
"""
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def wait_ready(child: ChildProcess) -> None:
    for _ in range(200):
        if "ready" in child.tail():
            return
        time.sleep(0.05)
    raise AssertionError(child.tail())


def wait_until_lines(child: ChildProcess, n: int) -> None:
    for _ in range(200):
        if len(child.tail().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(child.tail())


def test_output_goes_to_the_log_and_sigterm_gives_the_exit_code(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", READY_THEN_TERM], log_path=tmp_path / "c.log").start()
    wait_ready(child)
    assert child.alive() and child.poll() is None
    assert child.stop(grace=10) == 3
    assert not child.alive() and child.returncode == 3
    assert child.tail().splitlines() == ["ready", "bye"]


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    child = ChildProcess([sys.executable, "-c", STUBBORN], log_path=tmp_path / "s.log").start()
    wait_ready(child)
    assert child.stop(grace=0.5) is None  # killed, not exited
    assert child.returncode == -9


def test_kill_and_restart_keep_command_env_and_log(tmp_path: Path) -> None:
    script = "import os, time; print('run', os.environ['X'], flush=True); print('ready', flush=True); time.sleep(60)"
    child = ChildProcess([sys.executable, "-c", script], env={"X": "42"}, log_path=tmp_path / "r.log").start()
    wait_ready(child)
    first = child.pid
    assert child.kill() is True and child.kill() is False  # only a running child counts as killed
    child.start()
    assert child.pid != first and child.starts == 2
    wait_until_lines(child, 4)
    assert child.stop(grace=10) == -15  # SIGTERM's default action
    assert child.tail(lines=10).splitlines() == ["run 42", "ready", "run 42", "ready"]
    assert child.tail(lines=1) == "ready"


def test_exit_before_stop_and_never_started() -> None:
    child = ChildProcess([sys.executable, "-c", "raise SystemExit(7)"]).start()
    assert child.wait(10) == 7
    assert child.stop() == 7 and child.tail() == ""  # no log file: output discarded
    assert ChildProcess(["true"]).stop() is None


def test_pipes_carry_a_line_protocol_and_stderr_goes_to_the_log(tmp_path: Path) -> None:
    echo = ("import sys\nfor line in sys.stdin:\n    print(line.strip().upper(), flush=True)\n"
            "    print('saw', line.strip(), file=sys.stderr, flush=True)\n")
    child = ChildProcess([sys.executable, "-c", echo], log_path=tmp_path / "p.log", pipes=True).start()
    assert child.proc is not None and child.proc.stdin is not None and child.proc.stdout is not None
    child.proc.stdin.write("hello\n")
    child.proc.stdin.flush()
    assert child.proc.stdout.readline() == "HELLO\n"
    child.proc.stdin.close()
    assert child.stop(grace=10, sig=None) == 0  # EOF ends it; no signal sent
    assert child.tail() == "saw hello"


def test_a_broker_that_dies_at_start_is_reported_with_its_log_tail(tmp_path: Path) -> None:
    from pipeline.broker import wait_for_broker
    from pipeline.errors import BrokerError

    child = ChildProcess([sys.executable, "-c", "print('cannot bind'); raise SystemExit(2)"],
                         log_path=tmp_path / "broker.log").start()
    child.wait(10)
    with pytest.raises(BrokerError, match=r"exited with code 2 .*its log ends: cannot bind"):
        wait_for_broker("127.0.0.1:1", timeout=10, proc=child)
