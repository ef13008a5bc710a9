"""Settings shared by every scenario of one benchmark run, so agentgov and its peer see the same knobs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from pipeline.settings import Settings

# Batch sizes used by agentgov and by the Quix peer alike (the peer's sink flushes on the same count).
SCORER_BATCH = 2000
SINK_BATCH_ROWS = 20_000
SINK_BATCH_SECONDS = 0.25
SCORER_BATCH_SECONDS = 0.05


def scenario_settings(bootstrap: str, workdir: Path, name: str, **overrides: Any) -> Settings:
    """Settings for one scenario: its own topics, groups, chdb path and database."""
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    base: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "topic_transitions": f"bench.{tag}.agentgov.transitions.v1",
        "topic_assessments": f"bench.{tag}.agentgov.assessments.v1",
        "topic_dlq": f"bench.{tag}.agentgov.transitions.dlq",
        "topic_baselines": f"bench.{tag}.agentgov.baselines.v1",
        **{f"topic_{t}": f"bench.{tag}.agentgov.{t.replace('_', '.')}.v1" for t in (
            "decisions", "exceptions", "remediations", "facts_by_target", "facts_by_agent", "holdings",
            "delegations", "correlations")},
        "correlator_group": f"bench-correlator-{tag}",
        "scorer_group": f"bench-scorer-{tag}",
        "writer_group": f"bench-writer-{tag}",
        "clickhouse_dsn": f"chdb://{workdir / ('chdb-' + tag)}",
        "clickhouse_database": "bench",
        "metrics_port": 0,
        "state_dir": workdir / f"state-{tag}",
        "batch_max_messages": SCORER_BATCH,
        "batch_max_seconds": SCORER_BATCH_SECONDS,
        "writer_batch_rows": SINK_BATCH_ROWS,
        "writer_batch_seconds": SINK_BATCH_SECONDS,
        "log_level": "WARNING",
    }
    base.update(overrides)
    return Settings.load(**base)
