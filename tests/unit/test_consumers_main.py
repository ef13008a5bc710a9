"""The entrypoints' shared start-up (consumers/_main.py): signals first, bad settings exit 2 naming the role."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers._main import EXIT_CONFIG, stop_on_signals

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_signals() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_sets_the_stop_event_instead_of_killing(sig: signal.Signals, restore_signals: None) -> None:
    stop = stop_on_signals()
    assert not stop.is_set()
    os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
    assert stop.wait(5)


@pytest.mark.parametrize("role", ["scorer", "writer", "correlator"])
def test_bad_settings_exit_2_with_the_role_and_the_variable(role: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGOV_")}
    env["AGENTGOV_NOT_A_SETTING"] = "1"  # unknown keys are rejected before anything connects
    proc = subprocess.run([sys.executable, "-m", f"consumers.{role}"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == EXIT_CONFIG == 2, proc.stderr
    assert proc.stderr.startswith(f"agentgov {role}: ") and "AGENTGOV_NOT_A_SETTING" in proc.stderr
    assert "Traceback" not in proc.stderr
