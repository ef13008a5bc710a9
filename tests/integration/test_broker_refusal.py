"""The broker refuses one scorer output record: that input is dead-lettered, its neighbours go on.

Real Apache Kafka enforces a topic's ``max.message.bytes`` (Tansu does not); the test runs on the session's
3-broker cluster (``bus`` = kafka), which the Kafka tier starts anyway (a node of its own would add a JVM
start to the suite). The
assessments topic is created with a small one, so one valid event (large, incompressible attributes)
gets an assessment the broker refuses with MESSAGE_TOO_LARGE while the events around it, in the same
batch, are scored and stored. The refusal arrives after the produce call (in the delivery report), so
the scorer aborts the batch, isolates the refused record on the replay and dead-letters its input.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.deadletters import header
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import Bus, InProcess, committed, consume, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]
SERDE = Serde(SchemaSet.load())
TOPIC_MAX_BYTES = 16_384  # max.message.bytes of the assessments and DLQ topics: a neighbour batch fits, the big one not


def stored_ids(pipe: InProcess) -> set[str]:
    return {r["event_id"] for r in pipe.sink.query("SELECT event_id FROM {db}.transitions")}


@pytest.mark.parametrize("bus", ["kafka"], indirect=True)
def test_one_refused_assessment_is_dead_lettered_and_its_neighbours_stored(
    bus: Bus, settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher], in_process: Callable[[Settings], InProcess],
) -> None:
    tag = uuid.uuid4().hex[:10]
    small = {"topic_assessments": f"t{tag}.agentgov.assessments.v1", "topic_dlq": f"t{tag}.agentgov.transitions.dlq"}
    admin = AdminClient({"bootstrap.servers": bus.bootstrap})
    for done in admin.create_topics([NewTopic(name, 1, bus.replication, config={
            "max.message.bytes": str(TOPIC_MAX_BYTES)}) for name in small.values()]).values():
        done.result(30)
    settings = settings_factory(**small, topic_partitions=1, facts_partitions=1)
    pub = publisher_factory(settings)
    # One valid event whose assessment (it embeds the event) is over the topic's limit, well under the
    # 1 MB event limit: random text, so lz4 cannot shrink the batch under the limit.
    big = pub.complete(draft(run_id="run-big", attributes={
        f"blob{i}": secrets.token_urlsafe(3000) for i in range(8)}))
    assert TOPIC_MAX_BYTES < len(SERDE.encode(big)) < 40_000
    before = [pub.complete(draft(run_id=f"run-n{i}", step=0)) for i in range(4)]
    after = [pub.complete(draft(run_id=f"run-m{i}", step=0)) for i in range(4)]
    raw = Producer(settings.kafka_config(**{"acks": "all", "enable.idempotence": True}))
    for rec in [*before, big, *after]:  # one partition: one batch for the scorer, in this order
        raw.produce(settings.topic_transitions, SERDE.encode(rec), key=rec["run_id"].encode())
    assert raw.flush(30) == 0

    pipe = in_process(settings)
    neighbours = {r["event_id"] for r in [*before, *after]}
    assert wait_until(lambda: neighbours <= stored_ids(pipe), 60), "the neighbours were not stored"
    dead = consume(settings, settings.topic_dlq, 1, timeout=30, settle=1.0)
    assert len(dead) == 1, [header(m.headers(), "agentgov.source.offset") for m in dead]
    msg = dead[0]
    assert header(msg.headers(), "agentgov.error.reason") == "unproducible"
    assert header(msg.headers(), "agentgov.source.offset") == str(len(before))
    # Its assessment was refused, then its dead letter with the payload: the last one goes without it.
    reason = header(msg.headers(), "agentgov.error.message") or ""
    assert reason.count("[MSG_SIZE_TOO_LARGE]") == 2 and "output record" in reason and "dead letter" in reason
    assert msg.value() == b"" and header(msg.headers(), "agentgov.payload.dropped") == "1"
    assert header(msg.headers(), "agentgov.payload.bytes") == str(len(SERDE.encode(big)))
    total = len(before) + 1 + len(after)
    assert wait_until(lambda: committed(settings, settings.scorer_group, settings.topic_transitions) == total, 30)
    ids = stored_ids(pipe)
    assert big["event_id"] not in ids and len(ids) == len(neighbours)  # each stored once
    sample = pipe.metrics.registry.get_sample_value
    assert sample("agentgov_dead_letters_total", {"reason": "unproducible"}) == 1
    assert sample("agentgov_poison_records_total", {"role": "scorer", "reason": "produce_failed"}) == 1
    pipe.close()

    # A restart resumes after the dead letter: nothing is replayed, nothing dead-lettered twice.
    again = in_process(settings)
    later = pub.publish(draft(run_id="run-later", step=0))
    pub.flush()
    assert wait_until(lambda: later in stored_ids(again), 60)
    assert again.scorer.processed == 1  # only the new event: the refused one is behind the committed offset
    assert not again.metrics.registry.get_sample_value("agentgov_dead_letters_total", {"reason": "unproducible"})
    assert again.metrics.registry.get_sample_value(
        "agentgov_poison_records_total", {"role": "scorer", "reason": "produce_failed"}) == 0
