"""Store writer: ``python -m consumers.writer``.

Reads ``agentgov.assessments.v1`` and writes transitions, assessments and findings to ClickHouse,
committing offsets only after each insert. With chdb, run exactly one (chdb is single-process).
"""

from __future__ import annotations

import logging
import sys

from consumers._main import fatal, freeze_start_up, start, stop_on_signals
from pipeline import correlations
from pipeline.baselines import attach
from pipeline.decision_log import attach as attach_decision_log
from pipeline.errors import AgentgovError
from pipeline.scoring.policy import load_policy
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.writer import Writer

log = logging.getLogger("consumers.writer")


def main() -> int:
    stop = stop_on_signals()  # first: a SIGTERM during start-up still ends in a clean stop (exit 0)
    try:
        settings, metrics = start()
        sink = ClickHouseSink.connect(settings)
        if settings.clickhouse_migrate_on_start:
            sink.migrate()
        writer = Writer(settings, metrics, sink)
        attach(writer, settings, sink, load_policy(settings.policy_file))
        correlation_store = correlations.attach(writer, settings, sink)  # the correlators' findings
        decision_log = attach_decision_log(writer, settings, sink)
    except AgentgovError as exc:
        return fatal("writer", exc)  # exit 2
    freeze_start_up()
    writer.run(stop)
    correlation_store.close()
    decision_log.close()
    log.info("writer stopped", extra={"kv": {"stored": writer.stored}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
