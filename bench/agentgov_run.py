"""The agentgov side of the benchmark: ``pipeline.runner.Pipeline`` (N scorer subprocesses and the writer
thread) in a process of its own, driven over stdin/stdout by ``python -m bench``.

Commands, one per line on stdin; each answer is one JSON line on stdout:

- ``start``: start the pipeline; answers ``{"started": t}``.
- ``wait N``: wait until N assessments are stored; answers ``{"stored": n, "at": t}``, after a
  ``{"progress": {"stored": n}}`` line every 0.5 s while it waits.
- ``report``: stop the pipeline and answer with the timings and the store's row counts.

The writer's ``agentgov_event_to_stored_latency_seconds`` histogram is swapped for a recorder, so the
benchmark sees exactly the latencies the writer measures (occurred_at to insert committed), unbucketed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from pipeline.metrics import Metrics
from pipeline.runner import Pipeline
from pipeline.settings import Settings


class Recorder:
    """Stands in for a Histogram: keeps (observed at, value) for every observation."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []

    def observe(self, value: float) -> None:
        self.samples.append((time.time(), value))


def answer(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    settings = Settings.load(**spec["settings"])
    metrics = Metrics(CollectorRegistry())
    recorder = Recorder()
    metrics.event_to_stored = recorder  # type: ignore[assignment]
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # Correlators only when the spec asks (bench/correlation.py's "with" run); the scorers emit access facts
    # unless the spec's settings set access_facts false (its "without" run); the other scenarios keep the default.
    pipe = Pipeline(settings, scorers=spec["scorers"], metrics=metrics, log_dir=settings.state_dir,
                    supervise=False, correlators=spec.get("correlators", 0),
                    correlator_metrics_ports=spec.get("correlator_metrics_ports"))
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "start":
            pipe.start()
            answer({"started": time.time(), "pids": pipe.scorer_pids()})
        elif cmd == "wait":
            want, deadline = int(args[0]), time.monotonic() + float(args[1] if len(args) > 1 else 600)
            writer = pipe.writer
            shown = time.monotonic()
            while writer is not None and writer.stored < want and time.monotonic() < deadline:
                time.sleep(0.005)
                if time.monotonic() - shown >= 0.5:  # for the driver's progress display
                    shown = time.monotonic()
                    answer({"progress": {"stored": writer.stored}})
            stored = writer.stored if writer else 0
            last = recorder.samples[-1][0] if recorder.samples else time.time()
            answer({"stored": stored, "at": last})
        elif cmd == "report":
            pipe.stop()
            sink = pipe.sink
            assert sink is not None
            first = sink.query("SELECT toUnixTimestamp64Milli(min(scored_at)) AS first FROM {db}.assessments")
            hop = sink.query("SELECT toUnixTimestamp64Milli(occurred_at) AS o, "
                             "toUnixTimestamp64Milli(scored_at) - toUnixTimestamp64Milli(occurred_at) AS ms "
                             "FROM {db}.assessments ORDER BY o")
            answer({
                "first_scored_at": first[0]["first"] / 1000,
                "to_scored": [(r["o"], r["ms"]) for r in hop],
                "rows": {t: sink.count(t) for t in ("transitions", "assessments")},
                "latency": recorder.samples,
                "scorers": spec["scorers"],
            })
            sink.close()
            return 0
    pipe.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
