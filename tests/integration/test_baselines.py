"""Baselines come from the store's hourly rollup and are not inflated by redelivered batches."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from pipeline.assessment import AssessmentEncoder
from pipeline.baselines import compute, from_json, to_json
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.policy import load_policy
from pipeline.serde import SOE_HEADER, Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink, open_embedded
from pipeline.sinks.ocf import ContainerBuilder
from tests.support.helpers import FakeProducer

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
