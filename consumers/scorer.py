"""Scoring consumer: ``python -m consumers.scorer``.

Reads ``agentgov.transitions.v1``, scores every event, and publishes assessments and dead letters in
one Kafka transaction per batch. Run as many as there are partitions to share, in one group.
"""

from __future__ import annotations

import logging
import sys

from consumers._main import fatal, freeze_start_up, run, start, stop_on_signals
from pipeline.baselines import BaselineCache
from pipeline.consumer import Scorer
from pipeline.errors import AgentgovError
from pipeline.risk_exceptions import ExceptionCache
from pipeline.scoring.policy import load_policy

log = logging.getLogger("consumers.scorer")


def main() -> int:
    stop = stop_on_signals()  # first: a SIGTERM during start-up still ends in a clean stop (exit 0)
    try:
        settings, metrics = start()
        baselines = BaselineCache(settings, metrics).start()
        exceptions = ExceptionCache(settings, metrics).start()
        scorer = Scorer(settings, metrics, load_policy(settings.policy_file), baselines=baselines.get,
                        exceptions=lambda: exceptions.index)
    except AgentgovError as exc:
        return fatal("scorer", exc)  # exit 2
    freeze_start_up()
    code = run(scorer, stop)
    baselines.stop()
    exceptions.stop()
    log.info("scorer stopped", extra={"kv": {"processed": scorer.processed}})
    return code


if __name__ == "__main__":
    sys.exit(main())
