"""``agentgov run``'s supervisor restarts a scorer or correlator that ended, and counts why: exit 75 is a
stalled partition (pipeline/liveness.py), anything else an exit."""

from __future__ import annotations

import itertools
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics
from pipeline.runner import Pipeline
from pipeline.settings import Settings


class _Proc:
    def __init__(self, codes: list[int | None]) -> None:
        self.codes, self.returncode, self.starts = codes, None, 0

    def poll(self) -> int | None:
        self.returncode = self.codes.pop(0) if self.codes else None
        return self.returncode

    def start(self) -> _Proc:
        self.starts += 1
        return self


def test_the_supervisor_restarts_ended_roles_and_counts_stalls_apart() -> None:
    metrics = Metrics(CollectorRegistry())
    pipe = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9"), metrics=metrics, supervise=False)
    scorer, correlator = _Proc([75]), _Proc([None, 1])
    pipe.procs, pipe.correlator_procs = [scorer], [correlator]
    watcher = threading.Thread(target=pipe._watch, daemon=True)
    watcher.start()
    try:
        for _ in range(50):
            if scorer.starts and correlator.starts:
                break
            pipe.stop_event.wait(0.1)
    finally:
        pipe.stop_event.set()
        watcher.join(5)
    assert (scorer.starts, correlator.starts) == (1, 1)
    sample = metrics.registry.get_sample_value
    assert sample("agentgov_process_restarts_total", {"role": "scorer", "reason": "stalled"}) == 1
    assert sample("agentgov_process_restarts_total", {"role": "correlator", "reason": "exited"}) == 1


class _Writer:
    def __init__(self, failures: int) -> None:
        self.failures, self.runs, self.rejoins = failures, 0, 0

    def run(self, stop: threading.Event) -> None:
        self.runs += 1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a fault in the writer's loop")

    def rejoin(self) -> None:
        self.rejoins += 1


def test_a_failed_writer_loop_is_started_again_as_a_fresh_member(monkeypatch: Any) -> None:
    from pipeline import runner

    monkeypatch.setattr(runner, "RESTART_BACKOFF_MAX", 0.05)
    metrics = Metrics(CollectorRegistry())
    pipe = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9"), metrics=metrics, supervise=False)
    writer = _Writer(failures=2)
    pipe.writer = writer  # type: ignore[assignment]
    monkeypatch.setattr(pipe.stop_event, "wait", lambda seconds: False)  # no pause between attempts here
    pipe._run_writer()
    assert (writer.runs, writer.rejoins) == (3, 2)
    assert metrics.registry.get_sample_value("agentgov_process_restarts_total",
                                             {"role": "writer", "reason": "exited"}) == 2


class _Broker:
    def __init__(self, starts_failing: int) -> None:
        self.up, self.failing, self.starts, self.stops = False, starts_failing, 0, 0

    def alive(self) -> bool:
        return self.up

    def start(self) -> _Broker:
        self.starts += 1
        if self.failing:
            self.failing -= 1
            raise OSError("port busy")
        self.up = True
        return self

    def stop(self) -> None:
        self.stops += 1


def test_a_dead_embedded_broker_is_started_again_and_its_topics_made(monkeypatch: Any) -> None:
    from pipeline import runner

    made: list[str] = []
    monkeypatch.setattr(runner, "ensure_topics", lambda settings: made.append(settings.bootstrap()))
    monkeypatch.setattr(runner, "EmbeddedBroker", _Broker)  # the isinstance check in _watch_broker
    metrics = Metrics(CollectorRegistry())
    pipe = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9"), metrics=metrics, supervise=False)
    broker = _Broker(starts_failing=1)
    pipe.broker = broker  # type: ignore[assignment]
    pipe._watch_broker()  # dead, and the first start fails: stopped clean, tried again next round
    assert (broker.starts, broker.stops, made) == (1, 1, [])
    pipe._watch_broker()
    assert (broker.starts, made) == (2, ["127.0.0.1:9"])
    pipe._watch_broker()  # alive: left alone
    assert broker.starts == 2
    assert metrics.registry.get_sample_value("agentgov_process_restarts_total",
                                             {"role": "broker", "reason": "exited"}) == 2


class _Ended:
    """A child that ends with ``code`` each time it is polled after a start."""

    def __init__(self, code: int) -> None:
        self.code, self.returncode, self.starts, self.running = code, None, 0, True

    def poll(self) -> int | None:
        if self.running:
            self.running, self.returncode = False, self.code
            return self.code
        return self.returncode

    def start(self) -> _Ended:
        self.starts += 1
        self.running = True
        return self


def _pipe_with(*procs: _Ended) -> tuple[Pipeline, Metrics]:
    metrics = Metrics(CollectorRegistry())
    pipe = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9"), metrics=metrics, supervise=False)
    pipe.procs = list(procs)  # type: ignore[arg-type]
    return pipe, metrics


def test_a_child_failing_soon_after_each_start_is_restarted_after_a_doubling_pause() -> None:
    """A crash loop (CI: a scorer whose metrics port was taken, restarted 599 times in 400 s) waits 1, 2, 4 ...
    seconds, up to RESTART_BACKOFF_MAX, between starts; each failure is still counted and logged."""
    from pipeline.runner import RESTART_BACKOFF_MAX

    crashing = _Ended(2)
    pipe, metrics = _pipe_with(crashing)
    pipe._started[("scorer", 0)] = 0.0
    now, starts_at = 0.5, []
    while now < 200 and len(starts_at) < 8:
        before = crashing.starts
        pipe._watch_children(now)
        if crashing.starts > before:
            starts_at.append(now)
        now += 0.5
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts_at)]
    assert starts_at[0] == 1.5  # failed at 0.5 s, 1 s pause
    # each gap is the pause plus the poll that finds the restarted child ended again
    assert gaps == [2.5, 4.5, 8.5, 16.5, RESTART_BACKOFF_MAX + 0.5, RESTART_BACKOFF_MAX + 0.5,
                    RESTART_BACKOFF_MAX + 0.5]
    assert metrics.registry.get_sample_value("agentgov_process_restarts_total",
                                             {"role": "scorer", "reason": "exited"}) == 8


def test_a_killed_stalled_or_long_running_child_is_restarted_at_once() -> None:
    """Only a failure soon after a start waits: a child killed by a signal (chaos, OOM killer), one that exited
    75 to rejoin as a fresh member, and one that failed after running a long time are started again at once."""
    from pipeline.runner import RESTART_HEALTHY_SECONDS

    killed, stalled, late = _Ended(-9), _Ended(75), _Ended(1)
    pipe, _ = _pipe_with(killed, stalled, late)
    for i in range(3):
        pipe._started[("scorer", i)] = 0.0
    for step in range(3):  # each ends again right after its restart
        if step:
            late.code = -15  # its later ends come soon after a start, but by a signal: still at once
        pipe._watch_children(RESTART_HEALTHY_SECONDS + 1 + 0.1 * step)
    assert (killed.starts, stalled.starts, late.starts) == (3, 3, 3)
    assert not pipe._restart_due


def test_a_taken_child_metrics_port_stops_the_start_with_the_port_named() -> None:
    """The children serve /metrics on the ports after the pipeline's: one taken fails the start at once
    (ConfigError: `agentgov run` exits 3, invalid settings), naming the child and the port, before any
    broker or process is started."""
    import socket

    import pytest

    from pipeline.broker import bind_error, free_port_run
    from pipeline.errors import ConfigError

    base = free_port_run(6)
    held = socket.socket()
    held.bind(("127.0.0.1", base + 3))  # correlator 0's with 2 scorers
    held.listen()
    try:
        pipe = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9", metrics_port=base), scorers=2, correlators=2,
                        metrics=Metrics(CollectorRegistry()), supervise=False)
        assert [p for _, _, p in pipe.metrics_ports()] == [base + 1, base + 2, base + 3, base + 4]
        with pytest.raises(ConfigError, match=rf"correlator 0: 127\.0\.0\.1:{base + 3} \(.*in use\)"):
            pipe.start()
        assert pipe.broker is None and not pipe.procs
    finally:
        held.close()
    near_the_top = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9", metrics_port=65534), scorers=2,
                            correlators=0, metrics=Metrics(CollectorRegistry()), supervise=False)
    with pytest.raises(ConfigError, match=r"scorer 1: 127\.0\.0\.1:65536 \(.*0-65535"):
        near_the_top.check_metrics_ports()
    ipv6 = Pipeline(Settings.load(kafka_bootstrap="127.0.0.1:9", metrics_port=base, metrics_addr="::1"), scorers=1,
                    correlators=0, metrics=Metrics(CollectorRegistry()), supervise=False)
    if socket.has_ipv6 and bind_error(0, "::1") is None:  # the machine has IPv6 loopback: bindable, no error
        ipv6.check_metrics_ports()
