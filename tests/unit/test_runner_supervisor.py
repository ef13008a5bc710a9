"""``agentgov run``'s supervisor restarts a scorer or correlator that ended, and counts why: exit 75 is a
stalled partition (pipeline/liveness.py), anything else an exit."""

from __future__ import annotations

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
