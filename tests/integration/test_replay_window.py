"""A rebuild's replay reads the window before the committed offset by broker time, on both brokers, when
transactions leave commit markers at the end of the partition: the window is measured back from the last
*record* below the committed offset, not from the marker (before, a marker at ``committed - 1`` made the
replay read from ``committed - 200,000``: every record of a small partition, whatever its age). The
correlator's replay is complete: every fact of the window, with no count cap."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer, TopicPartition

from pipeline.recovery import log_reader, replay
from pipeline.settings import Settings
from tests.support.helpers import Bus, consume

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000


def test_the_window_is_counted_back_from_the_last_record_past_the_commit_markers(
        bus: Bus, settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory()
    topic = settings.topic_facts_by_target
    producer = Producer(settings.kafka_config(**{"transactional.id": f"window-test-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    now_ms = int(time.time() * 1000)
    stamps = [("old", now_ms - 3 * HOUR_MS)] * 5 + [("recent", now_ms - 600_000)] * 7
    for i, (what, ms) in enumerate(stamps):  # one transaction each: a commit marker after every record
        producer.begin_transaction()
        producer.produce(topic, f"{what}-{i}".encode(), partition=0, timestamp=ms)
        producer.commit_transaction(30)
    # A rebuild replays up to a committed offset, which its consumer read past: every record below it was
    # readable (under the last stable offset). Here the end is taken once the last record is readable too:
    # Kafka writes a transaction's commit markers to the partition after commit_transaction returns, so
    # right after it the last record can still sit past the last stable offset (a CI run took the end then,
    # and the replay, which stops at the end of what is readable, could not see the last record).
    assert len(consume(settings, topic, len(stamps), timeout=30)) == len(stamps)  # read_committed
    reader = log_reader(settings, "window-test")
    try:
        _, end = reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    finally:
        reader.close()
    assert end >= len(stamps)  # records and markers: where a consumer of everything commits

    def read(window_ms: int, **caps: object) -> list[str]:
        seen: list[str] = []
        replay(settings, TopicPartition(topic, 0, end), window_ms, lambda m: (m.value() or b"").decode(),
               seen.append, **caps)  # type: ignore[arg-type]
        return seen

    recent = [f"recent-{i}" for i in range(5, 12)]
    assert read(HOUR_MS, max_events=None, max_seconds=None) == recent  # the correlator's mode
    assert read(HOUR_MS) == recent  # the scorer's capped mode, well under its caps
    assert read(4 * HOUR_MS, max_events=None, max_seconds=None) == [f"old-{i}" for i in range(5)] + recent


def test_a_record_stamped_in_the_future_does_not_empty_the_window(
        bus: Bus, settings_factory: Callable[..., Settings]) -> None:
    """The window is counted back from the last record's time. A producer sets that time (CreateTime; Tansu
    keeps it whatever the topic says), so one record stamped 9999-12-31 (garbage, dead-lettered by its
    scorer) moved the window past every real record: a rebuild after it replayed nothing, and a tier climb
    split by a scorer restart lost its first steps. The anchor is now no later than this host's clock plus
    the future skew an event may have."""
    settings = settings_factory()
    topic = settings.topic_transitions
    producer = Producer(settings.kafka_config())
    now_ms = int(time.time() * 1000)
    for i in range(4):
        producer.produce(topic, f"recent-{i}".encode(), partition=0, timestamp=now_ms - 600_000 + i)
    producer.produce(topic, b"forged", partition=0, timestamp=253_402_300_799_000)
    assert producer.flush(30) == 0
    assert len(consume(settings, topic, 5, timeout=30)) == 5
    seen: list[str] = []
    replay(settings, TopicPartition(topic, 0, 5), HOUR_MS, lambda m: (m.value() or b"").decode(), seen.append)
    assert seen == [f"recent-{i}" for i in range(4)] + ["forged"]
