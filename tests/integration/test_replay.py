"""Context recovery by replay (``recovery.replay``) reads a partition up to its committed offset and stops
there, without waiting on the broker: every rebuild (assignment, rebalance, the rewind after an aborted
batch) replays each partition a role owns, one after another.

The old read asked for batches of 1,000 and consume() waits for its count or its 1 s timeout, so each
partition of fewer messages cost a second (a correlator owning 12 partitions: 12 s before its first batch
after every rebalance or rewind). Worse, an end past the last data record left it consuming until its
120 s deadline unless newer records came: librdkafka's position, which the transactional loop commits,
moves past a transaction's commit marker, so that is where a correlator's committed offset usually is
(its inputs are the scorers' transactional facts), and a correlator restarted on a quiet system waited
two minutes per partition. Timed here with a wide margin: tens of milliseconds against a second."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.recovery import replay
from pipeline.settings import Settings
from tests.support.helpers import Bus

pytestmark = pytest.mark.integration

STALL_S = 0.9  # the old read waited at least 1.0 s per partition


@pytest.mark.parametrize("bus", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)
def test_replay_reads_to_the_committed_offset_without_waiting_for_more(
    bus: Bus, settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    topic = f"replay-{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.kafka_config())
    admin.create_topics([NewTopic(topic, 4, settings.topic_replication)])[topic].result(30)
    producer = Producer(settings.kafka_config(**{"transactional.id": f"replay-test-{uuid.uuid4()}"}))
    producer.init_transactions(30)
    sizes = {0: 5, 1: 300, 2: 2_500, 3: 40}
    for p, n in sizes.items():  # one transaction per partition: data records, then a commit marker
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, f"{p}:{i}".encode(), key=str(i).encode(), partition=p)
        producer.commit_transaction(30)
    aborted = Producer(settings.kafka_config(**{"transactional.id": f"replay-test-{uuid.uuid4()}"}))
    aborted.init_transactions(30)
    aborted.begin_transaction()
    for i in range(7):  # after partition 3's data: a committed offset past them reads none of them
        aborted.produce(topic, f"aborted:{i}".encode(), partition=3)
    aborted.abort_transaction(30)

    def timed(p: int, end: int, max_seconds: float = 120.0) -> tuple[list[str], float]:
        seen: list[str] = []
        started = time.monotonic()
        n = replay(settings, TopicPartition(topic, p, end), 0, lambda m: m.value().decode(), seen.append,
                   max_seconds=max_seconds)
        assert n == len(seen)
        return seen, time.monotonic() - started

    for p, n in sizes.items():  # to the committed offset after the last record: all of it, in order
        seen, took = timed(p, n)
        assert seen == [f"{p}:{i}" for i in range(n)]
        assert took < STALL_S, f"partition {p}: {n} messages replayed in {took:.2f}s"
    seen, took = timed(2, 1_000)  # mid-partition: up to the offset, not beyond
    assert seen == [f"2:{i}" for i in range(1_000)] and took < STALL_S
    # The end past partition 0's commit marker (the position a consumer commits after reading the whole
    # transaction): the log's end is reached below it, and the replay stops there, not at its deadline.
    seen, took = timed(0, sizes[0] + 1, max_seconds=30)
    assert seen == [f"0:{i}" for i in range(sizes[0])] and took < STALL_S
    if bus.kind == "kafka":  # past the aborted records too (Tansu does not hide them: docs/guarantees.md)
        seen, took = timed(3, sizes[3] + 1 + 7 + 1, max_seconds=30)
        assert seen == [f"3:{i}" for i in range(sizes[3])] and took < STALL_S
