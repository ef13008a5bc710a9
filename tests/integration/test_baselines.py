"""Baselines come from the store's hourly rollup and are not inflated by redelivered batches."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from pipeline.assessment import AssessmentEncoder
from pipeline.baselines import BaselineCache, compute, from_json, to_json
from pipeline.drafts import draft
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.scoring.context import AgentBaseline, ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.policy import load_policy
from pipeline.serde import SOE_HEADER, Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded
from pipeline.sinks.ocf import ContainerBuilder
from tests.support.helpers import Bus, FakeProducer, wait_until

pytestmark = pytest.mark.integration


def test_rollup_baseline_is_idempotent_under_redelivery(chdb_path: Path) -> None:
    sink = ClickHouseSink(open_embedded(chdb_path), f"b{uuid.uuid4().hex[:10]}")
    sink.migrate()
    schemas = SchemaSet.load()
    serde = Serde(schemas)
    pub = TransitionPublisher(Settings(), serde=serde, producer=FakeProducer())  # type: ignore[arg-type]
    policy = load_policy()
    enc = AssessmentEncoder(schemas, Serde(schemas, record=ASSESSMENT), "t", policy)
    datums = []
    for i in range(30):
        doc = draft(run_id=f"r{i}", **({"policy.policy_version": "2"} if i % 10 == 0 else {}))
        if i % 3 == 0:
            doc.update(action="grant_entitlement", resource={**doc["resource"], "system": "salesforce",
                                                             "entitlement": "sales-standard"})
        decoded = serde.decode(serde.encode(pub.complete(doc)))
        scored = score(decoded.record, ScoringContext(policy=policy))
        datums.append(enc.encode(decoded, scored, 0, i, int(time.time() * 1000))[SOE_HEADER:])
    batch = ContainerBuilder(schemas.assessment.raw).build(datums)
    sink.insert_assessments(batch, token="first")
    sink.insert_assessments(batch, token="redelivered-with-other-boundaries")  # not caught by the token

    [b] = compute(sink, window_seconds=3600, approved=policy.policy.approved_policy_refs(), now_ms=1)
    assert b.agent_id == "agent-jml-01" and b.events == 30
    assert b.actions == {"add_group_member", "grant_entitlement"}
    assert b.systems == {"entra-id", "salesforce"} and b.entitlements == {"sales-standard"}
    assert b.inputs == {"department", "job_code"} and b.max_tier == 1
    assert b.grants_per_hour == 30  # every event is a granted access change, within one hour
    assert b.stale_policy_share == pytest.approx(3 / 30)
    assert from_json(to_json(b)) == b
    assert sink.count("transitions") == 30  # FINAL: the audit tables dedupe the same way
    sink.client.command(f"DROP DATABASE {sink.database}")


def test_a_poisoned_baseline_record_does_not_stop_the_follower(
    bus: Bus, settings_factory: Callable[..., Settings]
) -> None:
    """Audit P1 through a real broker: an integer ``agent_id``, ``as_of_ms: 1e400``, a baseline from year 9999
    and bytes that are not JSON on the baselines topic, then a good baseline. Before, the first killed the
    follower thread (silently: the gauge froze); the year-9999 one would have evicted every real baseline. Now
    the four are refused and counted, the good one is applied, and the follower is still up."""
    settings = settings_factory()
    metrics = Metrics(CollectorRegistry())
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all"}))
    now = int(time.time() * 1000)
    good = AgentBaseline("agent-good", 12, frozenset({"assign_role"}), max_tier=2, grants_per_hour=0.5,
                         as_of_ms=now)
    first = AgentBaseline("agent-first", 3, as_of_ms=now)
    doc = to_json(first).decode()
    poison = [doc.replace('"agent-first"', "7"), doc.replace(f'"as_of_ms":{now}', '"as_of_ms":1e400'),
              doc.replace(f'"as_of_ms":{now}', '"as_of_ms":253402300799000'), "zz-not-json"]
    producer.produce(settings.topic_baselines, to_json(first), key=b"agent-first")
    for p in poison:
        producer.produce(settings.topic_baselines, p.encode(), key=b"agent-poison")
    producer.produce(settings.topic_baselines, to_json(good), key=good.agent_id.encode())
    assert producer.flush(30) == 0
    cache = BaselineCache(settings, metrics).start()
    try:
        assert wait_until(lambda: cache.get("agent-good") is not None, 30)
        assert cache.get("agent-good") == good and cache.get("agent-first") == first
        sample = metrics.registry.get_sample_value
        assert sample("agentgov_follower_records_refused_total", {"follower": "baselines"}) == 4
        assert sample("agentgov_follower_up", {"follower": "baselines"}) == 1
        assert cache.evict() == 0  # the year-9999 record was refused, so nothing real looks stale
        later = AgentBaseline("agent-later", 1, as_of_ms=int(time.time() * 1000))  # the thread still follows
        producer.produce(settings.topic_baselines, to_json(later), key=b"agent-later")
        assert producer.flush(30) == 0
        assert wait_until(lambda: cache.get("agent-later") is not None, 30)
        assert wait_until(lambda: (sample("agentgov_baseline_age_seconds") or 1e9) < 60, 10)
    finally:
        cache.stop()
    assert metrics.registry.get_sample_value("agentgov_follower_up", {"follower": "baselines"}) == 0
