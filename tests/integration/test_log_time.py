"""The transitions topic's record time is the broker's (LogAppendTime) on Kafka.

A scorer reads an event's log time from its record: AG-EVD-003's completeness, the backdating counter and
risk-exception coverage (an event sent after its exception ended) all compare ``occurred_at`` with it. With
the default CreateTime that time is whatever the producer says, and an agent with a raw Kafka client could
stamp a grant sent today as sent inside an exception that ended last week.

Kafka only: Tansu 0.6, the embedded broker, accepts the topic setting and ignores it (records keep the
producer's time; checked by hand, docs/guarantees.md says so)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from pipeline.kraft import KraftCluster
from pipeline.settings import Settings
from pipeline.topics import check_log_time, ensure_topics
from tests.support.helpers import Bus, consume, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.fixture
def bus(kafka_cluster: KraftCluster) -> Bus:
    return Bus("kafka", kafka_cluster.bootstrap, 3, kafka_cluster)

DAY_MS = 86_400_000


def test_a_producer_cannot_set_the_time_an_event_reached_the_log(
        bus: Bus, settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    producer = Producer(settings.kafka_config())
    forged = int(time.time() * 1000) - 30 * DAY_MS
    before = int(time.time() * 1000)
    producer.produce(settings.topic_transitions, f"raw-{uuid.uuid4()}".encode(), partition=0, timestamp=forged)
    assert producer.flush(30) == 0
    [msg] = consume(settings, settings.topic_transitions, 1, timeout=30)
    kind, at = msg.timestamp()
    assert kind == TIMESTAMP_LOG_APPEND_TIME, (bus.kind, kind, at)
    assert before - 5_000 <= at <= int(time.time() * 1000) + 5_000, (bus.kind, at, forged)


def test_a_transitions_topic_created_before_is_reported_with_the_fix(
        bus: Bus, settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture) -> None:
    """An upgrade keeps a topic created with CreateTime: ensure_topics leaves it as it is and says so."""
    old = settings_factory(topic_transitions=f"t{uuid.uuid4().hex[:10]}.old.transitions.v1")  # created LogAppendTime
    admin = AdminClient(old.kafka_config())
    legacy = f"t{uuid.uuid4().hex[:10]}.legacy.transitions.v1"
    admin.create_topics([NewTopic(legacy, 1, 3)])[legacy].result(30)  # the broker's default: CreateTime
    resource = ConfigResource(ResourceType.TOPIC, legacy)

    def described() -> bool:  # every broker knows the topic (a describe may go to any of the three)
        try:
            return all(admin.describe_configs([resource], request_timeout=5)[resource].result(5) for _ in range(3))
        except KafkaException:
            return False

    assert wait_until(described, 30)
    with caplog.at_level(logging.INFO, logger="pipeline.topics"):
        ensure_topics(old.model_copy(update={"topic_transitions": legacy}))
        assert check_log_time(admin, old.topic_transitions)  # the one ensure_topics created: no warning
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.kv["topic"] == legacy and warning.kv["message.timestamp.type"] == "CreateTime"
    assert f"--entity-name {legacy} --add-config message.timestamp.type=LogAppendTime" in warning.kv["fix"]
