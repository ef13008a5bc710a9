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


@pytest.mark.parametrize("bus", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True)
def test_a_correlator_restarted_on_a_quiet_system_resumes_where_it_committed_and_rebuilds_at_once(
    bus: Bus, settings_factory: Callable[..., Settings],
) -> None:
    """The role-level case: a correlator judged every fact and committed (its positions past the scorers'
    commit markers); nothing new arrives; a replacement must rebuild its partitions without waiting for
    records that will not come. With the old read it took 525 s for 12 partitions; here it must finish
    within the group join's own seconds.

    The first correlator must also have committed its offsets at all: most of its batches find nothing,
    and Tansu 0.6 drops the offsets of a transaction without records (``Checkpoint.commit``), so its group
    stayed at its first batch's offsets and a replacement judged everything after them again."""
    import logging
    import threading

    from prometheus_client import CollectorRegistry

    from pipeline.correlator import Correlator
    from pipeline.facts import FactEmitter
    from pipeline.metrics import Metrics
    from pipeline.publisher import TransitionPublisher
    from pipeline.scoring.policy import load_policy
    from pipeline.topics import ensure_topics
    from pipeline.workload import Workload

    settings = settings_factory()
    ensure_topics(settings)
    rebuilt: list[tuple[str, int, int]] = []

    class Rebuilt(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "correlator state rebuilt":
                kv = record.__dict__.get("kv", {})
                rebuilt.append((kv["topic"], kv["partition"], kv["facts"]))

    handler = Rebuilt(level=logging.INFO)
    log = logging.getLogger("pipeline.correlator")
    old_level = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        first = Correlator(settings, Metrics(CollectorRegistry()), load_policy(settings.policy_file))
        emitter, pub = FactEmitter(settings, first.facts), TransitionPublisher(settings)
        producer = Producer(settings.kafka_config(**{"transactional.id": f"replay-scorer-{uuid.uuid4()}"}))
        producer.init_transactions(30)
        producer.begin_transaction()
        facts = 0
        for op in Workload(seed=3, bad_inputs=False, planted=False).ops(1_500):
            if op.kind in ("draft", "record") and op.send == "send" and op.mutate is None:
                facts += emitter.emit(producer.produce, pub.complete(op.payload), 0, facts)
        producer.commit_transaction(30)
        assert facts > 500

        def run_until(correlator: Correlator, done: Callable[[], bool], seconds: float) -> float:
            stop = threading.Event()
            started = time.monotonic()
            thread = threading.Thread(target=correlator.run, args=(stop,), daemon=True)
            thread.start()
            try:
                while not done() and time.monotonic() - started < seconds:
                    time.sleep(0.05)
                return time.monotonic() - started
            finally:
                stop.set()
                thread.join(30)

        n = settings.facts_partitions * 2
        run_until(first, lambda: _committed_to_end(settings), 120)  # every fact judged and committed
        assert _committed_to_end(settings)
        rebuilt.clear()
        second = Correlator(settings, Metrics(CollectorRegistry()), load_policy(settings.policy_file))
        took = run_until(second, lambda: len(rebuilt) >= n, 120)
        assert len(rebuilt) == n, f"{len(rebuilt)} of {n} partitions rebuilt in {took:.0f}s"
        assert sum(f for _, _, f in rebuilt) > 0  # it did replay facts, and stopped at their end
        assert took < 30, f"rebuild took {took:.1f}s"
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def _committed_to_end(settings: Settings) -> bool:
    """Whether the correlator group's committed offsets reached the end of every fact partition (past the last
    commit marker: where librdkafka's position is after a whole transaction was read)."""
    from confluent_kafka import Consumer

    probe = Consumer(settings.kafka_config(**{"group.id": settings.correlator_group,
                                               "enable.auto.commit": False}))
    try:
        tps = [TopicPartition(t, p) for t in (settings.topic_facts_by_target, settings.topic_facts_by_agent)
               for p in range(settings.facts_partitions)]
        committed = probe.committed(tps, timeout=10)
        ends = [probe.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        return any(end > 0 for end in ends) and all(c.offset == end for c, end in zip(committed, ends, strict=True)
                                                    if end > 0)
    finally:
        probe.close()
