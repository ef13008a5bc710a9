"""The whole path on real components: SDK -> broker -> scorer subprocess -> assessments -> writer -> chdb,
on each broker (``bus``: Tansu, and a 3-broker Apache Kafka cluster)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.broker import free_port
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import Bus, consume, scrape, wait_until

pytestmark = pytest.mark.integration


def test_events_flow_to_store_topic_dlq_and_metrics(
    bus: Bus,
    settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory()
    port = free_port()
    pipe = pipeline_factory(settings, scorers=1, scorer_metrics_ports=[port])
    pub = publisher_factory(settings)

    benign = [pub.publish(draft(run_id=f"run-b{i}", **{"target.identity_id": f"u{i}"})) for i in range(40)]
    unapproved = pub.publish(draft(run_id="run-x1", action="assign_role",
                                   **{"resource.resource_id": "role/Admin", "resource.privilege_tier": 3}))
    model = pub.publish(draft(run_id="run-x2", **{"decision.authority": "model"}))
    selfg = pub.publish(draft(run_id="run-x3", **{"target.identity_id": "agent-jml-01",
                                                   "target.identity_type": "agent"}))
    noevid = pub.publish(draft(run_id="run-x4", inputs_used=[], **{"trigger.ref": None}))
    # bad inputs, straight to the topic
    pub.producer.produce(settings.topic_transitions, b"\x17garbage", key=b"bad")
    pub.producer.produce(settings.topic_transitions, b"\xc3\x01" + b"\xee" * 8 + b"\x02", key=b"bad")
    rec = pub.complete(draft(run_id="run-bad"))
    rec["resource"]["privilege_tier"] = 9
    pub.producer.produce(settings.topic_transitions, pub.serde.encode(rec), key=b"bad")  # past the SDK's check
    pub.flush()
    valid = len(benign) + 4

    assert pipe.wait_stored(valid, timeout=90), f"stored only {pipe.writer.stored if pipe.writer else 0}"
    assert pipe.sink is not None
    assert pipe.sink.count("transitions") == valid
    assert pipe.sink.count("assessments") == valid
    codes = {r["event_id"]: r["codes"] for r in pipe.sink.query(
        "SELECT event_id, groupArray(code) AS codes FROM {db}.findings FINAL GROUP BY event_id")}
    assert codes.get(unapproved) == ["AG-AUTH-001"]
    assert "AG-AUTH-002" in codes.get(model, [])
    assert "AG-AUTH-003" in codes.get(selfg, [])
    assert "AG-EVD-001" in codes.get(noevid, [])
    assert not any(e in codes for e in benign), "benign events must raise no findings"
    row = pipe.sink.query("SELECT privilege_tier, approved_by, policy_version, authority FROM {db}.transitions "
                          "FINAL WHERE event_id = {e:String}", {"e": unapproved})[0]
    assert row == {"privilege_tier": 3, "approved_by": None, "policy_version": "7", "authority": "policy_engine"}

    # assessments topic: one per valid event, keyed by event_id, decodable
    msgs = consume(settings, settings.topic_assessments, valid)
    assert len(msgs) == valid
    serde = Serde(SchemaSet.load(), record=ASSESSMENT)
    by_id = {m.key().decode(): serde.decode(m.value()).record for m in msgs}
    assert by_id[unapproved]["risk_level"] == "critical"
    assert by_id[unapproved]["transition"]["resource"]["privilege_tier"] == 3
    assert by_id[benign[0]]["risk_score"] == 0

    # DLQ: every bad input with its reason and source coordinates
    dead = consume(settings, settings.topic_dlq, 3)
    reasons = sorted(dict(m.headers())["agentgov.error.reason"].decode() for m in dead)
    assert reasons == ["bad_magic", "invalid_value", "unknown_schema"]
    headers = dict(dead[0].headers())
    assert headers["agentgov.source.topic"].decode() == settings.topic_transitions
    assert int(headers["agentgov.source.offset"]) >= 0

    # metrics, scraped from the scorer's live /metrics endpoint
    def counted() -> bool:
        return scrape(port).get(("agentgov_events_consumed_total", ()), 0) == valid + 3

    assert wait_until(counted, 20)
    samples = scrape(port)
    assert samples[("agentgov_dead_letters_total", (("reason", "bad_magic"),))] == 1
    assert samples[("agentgov_dead_letters_total", (("reason", "invalid_value"),))] == 1
    assert samples[("agentgov_findings_total", (("category", "risk"), ("code", "AG-AUTH-001"),
                                                ("severity", "critical")))] == 1
    assert samples[("agentgov_risk_score_count", ())] == valid
    writer_rows = pipe.metrics.registry.get_sample_value("agentgov_sink_rows_total", {"table": "ingest"})
    assert writer_rows == valid
    assert pipe.metrics.registry.get_sample_value("agentgov_event_to_stored_latency_seconds_count") == valid
