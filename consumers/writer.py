"""Store writer: ``python -m consumers.writer``.

Reads ``agentgov.assessments.v1`` and writes transitions, assessments and findings to ClickHouse,
committing offsets only after each insert. With chdb, run exactly one (chdb is single-process).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading

from pipeline import correlations
from pipeline.baselines import attach
from pipeline.decision_log import attach as attach_decision_log
from pipeline.errors import AgentgovError
from pipeline.logs import configure_logging
from pipeline.metrics import Metrics, serve
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.writer import Writer

log = logging.getLogger("consumers.writer")


def main() -> int:
    # Handlers first: a SIGTERM that lands during start-up (joining, replaying context) still ends in
    # a clean stop with exit code 0.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        settings = Settings.load()
        configure_logging(settings.log_level, settings.log_format)
        metrics = Metrics()
        serve(metrics, settings.metrics_port, settings.metrics_addr)
        sink = ClickHouseSink.connect(settings)
        if settings.clickhouse_migrate_on_start:
            sink.migrate()
        writer = Writer(settings, metrics, sink)
        attach(writer, settings, sink, load_policy(settings.policy_file))
        correlations.attach(writer, settings, sink)  # the correlators' findings -> cross_run_findings
        decision_log = attach_decision_log(writer, settings, sink)
    except AgentgovError as exc:
        print(f"agentgov writer: {exc}", file=sys.stderr)
        return 2
    gc.freeze()  # start-up objects are long-lived: keep them out of every collection
    gc.set_threshold(50_000, 20, 10)  # fewer gen-0 collections on the per-message hot path
    writer.run(stop)
    decision_log.close()
    log.info("writer stopped", extra={"kv": {"stored": writer.stored}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
