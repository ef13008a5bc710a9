"""``agentgov run``'s supervisor restarts a scorer or correlator that ended, and counts why: exit 75 is a
stalled partition (pipeline/liveness.py), anything else an exit."""

from __future__ import annotations

import threading

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
