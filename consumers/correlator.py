"""Correlation consumer: ``python -m consumers.correlator``.

Reads the entity-keyed access facts (``agentgov.facts.by-target.v1`` and ``agentgov.facts.by-agent.v1``),
follows the delegation graph and the drift baselines, and publishes cross-run findings with its offsets
in one Kafka transaction per batch. Run up to ``facts_partitions`` of them in one group.
"""

from __future__ import annotations

import logging
import sys

from consumers._main import fatal, freeze_start_up, run, start, stop_on_signals
from pipeline.baselines import BaselineCache
from pipeline.correlator import Correlator
from pipeline.errors import AgentgovError
from pipeline.scoring.policy import load_policy

log = logging.getLogger("consumers.correlator")


def main() -> int:
    stop = stop_on_signals()  # first: a SIGTERM during start-up still ends in a clean stop (exit 0)
    try:
        settings, metrics = start()
        baselines = BaselineCache(settings, metrics).start()
        correlator = Correlator(settings, metrics, load_policy(settings.policy_file), baselines=baselines.for_identity)
    except AgentgovError as exc:
        return fatal("correlator", exc)  # exit 2
    # The delegation graph is read whole before the first fact is judged (a laundering chain needs it).
    if not correlator.graph.wait_ready(60):
        log.warning("delegation graph not caught up after 60 s; starting anyway")
    freeze_start_up()  # as the scorer and the writer: a batch's facts allocate far more than 700 containers
    code = run(correlator, stop)
    baselines.stop()
    log.info("correlator stopped", extra={"kv": {"processed": correlator.processed, "findings": correlator.emitted}})
    return code


if __name__ == "__main__":
    sys.exit(main())
