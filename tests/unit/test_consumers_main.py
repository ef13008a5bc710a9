"""The entrypoints' shared start-up (consumers/_main.py): signals first, bad settings exit 2 naming the role."""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Iterator

import pytest

from consumers._main import EXIT_CONFIG, stop_on_signals


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
def test_bad_settings_exit_2_with_the_role_and_the_variable(
    role: str, restore_signals: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for key in [k for k in os.environ if k.startswith("AGENTGOV_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AGENTGOV_NOT_A_SETTING", "1")  # unknown keys are rejected before anything connects
    main = importlib.import_module(f"consumers.{role}").main
    assert main() == EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert err.startswith(f"agentgov {role}: ") and "AGENTGOV_NOT_A_SETTING" in err
