"""Correlation consumer: ``python -m consumers.correlator``.

Reads the entity-keyed access facts (``agentgov.facts.by-target.v1`` and ``agentgov.facts.by-agent.v1``),
follows the delegation graph and the drift baselines, and publishes cross-run findings with its offsets
in one Kafka transaction per batch. Run up to ``facts_partitions`` of them in one group.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from pipeline.baselines import BaselineCache
from pipeline.correlator import Correlator
from pipeline.errors import AgentgovError
from pipeline.logs import configure_logging
from pipeline.metrics import Metrics, serve
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings

log = logging.getLogger("consumers.correlator")


def main() -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        settings = Settings.load()
        configure_logging(settings.log_level, settings.log_format)
        metrics = Metrics()
        serve(metrics, settings.metrics_port, settings.metrics_addr)
        baselines = BaselineCache(settings, metrics).start()
        correlator = Correlator(settings, metrics, load_policy(settings.policy_file), baselines=baselines.get)
    except AgentgovError as exc:
        print(f"agentgov correlator: {exc}", file=sys.stderr)
        return 2
    # The delegation graph is read whole before the first fact is judged (a laundering chain needs it).
    if not correlator.graph.wait_ready(60):
        log.warning("delegation graph not caught up after 60 s; starting anyway")
    correlator.run(stop)
    baselines.stop()
    log.info("correlator stopped", extra={"kv": {"processed": correlator.processed, "findings": correlator.emitted}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
