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


def test_a_role_whose_metrics_port_is_taken_stops_with_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 2 with the address and the setting to change, not a traceback (its supervisor then restarts it
    with a growing pause: tests/unit/test_runner_supervisor.py)."""
    import socket

    from consumers._main import start
    from pipeline.errors import ConfigError

    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    monkeypatch.setenv("AGENTGOV_METRICS_PORT", str(port))
    monkeypatch.setenv("AGENTGOV_KAFKA_BOOTSTRAP", "127.0.0.1:9")
    try:
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port}.*AGENTGOV_METRICS_PORT"):
            start()
    finally:
        held.close()
