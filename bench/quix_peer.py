"""The peer: the same logical pipeline written with Quix Streams, run as ``python -m bench.quix_peer SPEC``.

Kept honest: the same events from the same topic; the same decode (``Serde.decode``) and value checks;
the same rules with the same context (a ``PartitionContext`` per partition, ``pipeline.scoring.engine.score``);
the same ``RiskAssessment`` bytes (``AssessmentEncoder``) produced to an assessments topic; the same
ClickHouse writes (one Avro container per partition batch through ``ClickHouseSink.insert_assessments``)
with the sink flushing at the same batch size (``commit_every``) and interval; exactly-once processing,
as agentgov's scorer. The idiomatic Quix shape is one application that both produces the topic and
feeds the sink, so it skips agentgov's re-read of the assessments topic: that favours the peer.

It prints one JSON line: first consume, last row stored, and the store's row counts.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from quixstreams import Application, message_context
from quixstreams.models.serializers import Deserializer
from quixstreams.sinks import BatchingSink, SinkBatch

from pipeline import __version__
from pipeline.assessment import AssessmentEncoder
from pipeline.events import check_values
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.policy import load_policy
from pipeline.serde import Decoded, Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.sinks.ocf import ContainerBuilder
from pipeline.state import PartitionContext


class TransitionDeserializer(Deserializer):
    def __init__(self, serde: Serde) -> None:
        super().__init__()
        self.serde = serde
        self.first = 0.0

    def __call__(self, value: bytes, ctx: Any) -> Decoded:
        if not self.first:
            self.first = time.time()
        return self.serde.decode(value)


class AssessmentSink(BatchingSink):
    """Writes each partition's batch of assessments as one Avro container, as agentgov's writer does."""

    def __init__(self, sink: ClickHouseSink, builder: ContainerBuilder, topic: str, expect: int, app: Application
                 ) -> None:
        super().__init__()
        self.sink, self.builder, self.topic = sink, builder, topic
        self.expect, self.app = expect, app
        self.stored, self.last = 0, 0.0

    def setup(self) -> None:
        return None

    def write(self, batch: SinkBatch) -> None:
        datums = [item.value[10:] for item in batch]
        token = f"{self.topic}-{batch.partition}-{batch.start_offset}-{len(datums)}"
        self.sink.insert_assessments(self.builder.build(datums), token)
        self.stored += len(datums)
        if self.stored >= self.expect:
            self.last = time.time()
            self.app.stop()


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    settings = Settings.load(**spec["settings"])
    schemas = SchemaSet.load()
    policy = load_policy(settings.policy_file)
    serde = Serde(schemas, max_bytes=settings.max_message_bytes)
    encoder = AssessmentEncoder(schemas, Serde(schemas, record=ASSESSMENT), __version__, policy)
    store = ClickHouseSink.connect(settings)
    store.migrate()
    app = Application(
        broker_address=settings.bootstrap(), consumer_group=settings.scorer_group, auto_offset_reset="earliest",
        commit_interval=settings.writer_batch_seconds, commit_every=settings.writer_batch_rows,
        processing_guarantee=spec.get("guarantee", "exactly-once"), use_changelog_topics=False,
        state_dir=str(settings.state_dir / "quix"), loglevel=logging.WARNING,
        consumer_extra_config={"session.timeout.ms": settings.session_timeout_ms,
                               "heartbeat.interval.ms": max(500, settings.session_timeout_ms // 3),
                               "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 4194304},
        producer_extra_config={"linger.ms": 5, "compression.type": "lz4"},
    )
    decoder = TransitionDeserializer(serde)
    source = app.topic(settings.topic_transitions, value_deserializer=decoder, key_deserializer="bytes")
    out = app.topic(settings.topic_assessments, value_serializer="bytes", key_serializer="bytes")
    contexts: dict[int, PartitionContext] = {}
    window_ms = settings.context_window_seconds * 1000
    max_future = settings.max_future_skew_seconds * 1000
    keys = {k: v.get_secret_value().encode() for k, v in settings.signing_keys.items()}

    def assess(decoded: Decoded) -> bytes:
        mc = message_context()
        ev = decoded.record
        now_ms = int(time.time() * 1000)
        check_values(ev, now_ms=now_ms, max_future_ms=max_future)
        pctx = contexts.get(mc.partition)
        if pctx is None:
            pctx = contexts[mc.partition] = PartitionContext(window_ms)
        ctx = ScoringContext(
            policy=policy, run_history=pctx.run_history(ev), target_history=pctx.target_history(ev),
            agent_history=pctx.agent_history(ev), baseline=None, seen_event_hashes=pctx.seen,
            signing_keys=keys, require_signatures=settings.require_signatures)
        scored = score(ev, ctx)
        value = encoder.encode(decoded, scored, mc.partition, mc.offset, now_ms)
        pctx.observe(ev)
        return value

    sink = AssessmentSink(store, ContainerBuilder(schemas.assessment.raw), settings.topic_assessments,
                          spec["count"], app)
    sdf = app.dataframe(source).apply(assess)
    sdf.to_topic(out)
    sdf.sink(sink)
    app.run()
    rows = {t: store.count(t) for t in ("transitions", "assessments")}
    sys.stdout.write(json.dumps({"first": decoder.first, "last": sink.last, "stored": sink.stored,
                                 "rows": rows, "guarantee": spec.get("guarantee", "exactly-once")}) + "\n")
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
