"""A role stopped during its first group join must not leave its group unable to assign partitions.

On Tansu 0.6 a member that sends LeaveGroup before its first join completed stays the group's leader:
every later member is answered REBALANCE_IN_PROGRESS for good (see ``pipeline/membership.py``). On Tansu
both tests fail with a plain ``consumer.close()``; on Kafka the first shows the wait costs nothing there."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.drafts import draft
from pipeline.loop import TransactionalLoop
from pipeline.membership import Membership
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.runner import settings_env
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.writer import Writer
from tests.support.chaos import Slot
from tests.support.helpers import Bus, wait_until

pytestmark = pytest.mark.integration


def test_a_member_stopped_during_its_first_join_leaves_the_group_assignable(
    bus: Bus, settings_factory: Callable[..., Settings],
) -> None:
    settings = settings_factory()
    group = f"join-{uuid.uuid4().hex[:8]}"
    topic = settings.topic_transitions

    first = Membership(Consumer(settings.consumer_config(group)), "first")
    first.subscribe([topic])
    # librdkafka's own thread sends the JoinGroup; Tansu holds it about 3 s. The assign callback (which sets
    # ``joined``) runs only inside a poll, so without one the member has not seen its join complete, on any
    # broker (Kafka here completes joins at once: group.initial.rebalance.delay.ms is 0).
    time.sleep(0.5)
    first.leave()

    assigned: list[int] = []

    def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
        assigned.extend(p.partition for p in partitions)

    second = Membership(Consumer(settings.consumer_config(group)), "second")
    second.subscribe([topic], on_assign=on_assign)
    def assigned_after_poll(enough: Callable[[], bool]) -> Callable[[], bool]:
        # The poll only serves the assign callback: a record (or an error event) it returns proves nothing.
        return lambda: second.consumer.consume(10, 0.2) is not None and enough()

    try:
        assert wait_until(assigned_after_poll(lambda: len(assigned) > 0), 40), \
            "the group never assigned a partition after a member left during its join"
        assert wait_until(assigned_after_poll(lambda: sorted(assigned) == list(range(settings.topic_partitions))),
                          20)
    finally:
        second.leave()


def test_a_writer_stopped_during_start_up_hands_its_group_to_the_next_writer(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    tmp_path: Path,
) -> None:
    """Through the real role: a writer thread stopped while joining, then a second writer stores."""
    settings = settings_factory()
    sink = ClickHouseSink.connect(settings)
    sink.migrate()

    def writer() -> tuple[Writer, threading.Event, threading.Thread]:
        w = Writer(settings, Metrics(CollectorRegistry()), sink)
        stop = threading.Event()
        thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
        thread.start()
        return w, stop, thread

    first, stop, thread = writer()
    assert wait_until(lambda: first.membership.subscribed, 10)
    stop.set()  # well inside the join, which takes seconds
    thread.join(60)
    assert not thread.is_alive()

    second, stop, thread = writer()
    scorer = Slot("scorer-0", "consumers.scorer", settings_env(settings), tmp_path).start()
    try:
        pub = publisher_factory(settings)
        for i in range(50):
            pub.publish(draft(run_id=f"run-join-{i}"))
        pub.flush()
        assert wait_until(lambda: second.stored >= 50, 90), f"the next writer stored {second.stored} of 50"
    finally:
        scorer.terminate(20)
        stop.set()
        thread.join(60)


class _SlowRebuild(TransactionalLoop):
    """A stateful role whose first rebuild takes ``busy`` seconds, inside the assign callback like every
    rebuild (a correlator replaying a big window). It owns what it was assigned and not revoked or lost, and
    keeps what it gave up."""

    role = "slow-rebuild"

    def __init__(self, settings: Settings, busy: float) -> None:
        super().__init__(settings, Metrics(CollectorRegistry()), group=settings.correlator_group,
                         topics=[settings.topic_transitions])
        self.busy = busy
        self.rebuilding = threading.Event()
        self.rebuilt = threading.Event()
        self.owned: set[int] = set()
        self.forgotten: list[int] = []

    def rebuild_all(self, tps: list[TopicPartition]) -> None:
        if tps and not self.rebuilding.is_set():
            self.rebuilding.set()
            time.sleep(self.busy)
            self.rebuilt.set()
        self.owned |= {tp.partition for tp in tps}

    def forget(self, tp: TopicPartition) -> None:
        self.owned.discard(tp.partition)
        self.forgotten.append(tp.partition)

    def handle(self, msgs: list[Any]) -> None:
        return None

    def wrote(self, tally: Any) -> bool:
        return False


@pytest.mark.kafka
@pytest.mark.parametrize("bus", ["kafka"], indirect=True)
def test_a_rebuild_longer_than_max_poll_interval_keeps_its_partitions_when_a_member_joins(
    bus: Bus, settings_factory: Callable[..., Settings],
) -> None:
    """A rebuild runs inside the assign callback. On Kafka a rebalance waits for a member only its
    ``max.poll.interval.ms`` (the rebalance timeout), and librdkafka rejoins only once the assignment is done;
    so with the rebuild before the assignment, a member joining during a 20 s rebuild was handed every
    partition after 8 s, and the rebuilt member lost them all and rebuilt again (measured; this test failed
    so). The loop takes its partitions first: the member rejoins at once keeping them, and gives up the
    newcomer's share only when the rebuild is over. Through the real loop (consumer, membership, checkpoint)
    on Kafka; the role's rebuild is a 20 s wait, the interval 8 s."""
    busy, interval = 20.0, 8.0
    settings = settings_factory(max_poll_interval_seconds=interval)
    partitions = settings.topic_partitions
    slow = _SlowRebuild(settings, busy)
    stop = threading.Event()
    thread = threading.Thread(target=slow.run, args=(stop,), daemon=True)
    thread.start()
    newcomer = Consumer(settings.consumer_config(settings.correlator_group))
    got: set[int] = set()
    got_while_rebuilding: set[int] = set()

    def on_assign(consumer: Consumer, tps: list[TopicPartition]) -> None:
        got.update(tp.partition for tp in tps)
        if not slow.rebuilt.is_set():
            got_while_rebuilding.update(tp.partition for tp in tps)

    def on_revoke(consumer: Consumer, tps: list[TopicPartition]) -> None:
        got.difference_update(tp.partition for tp in tps)

    try:
        assert slow.rebuilding.wait(60), "the slow member was never assigned a partition"
        newcomer.subscribe([settings.topic_transitions], on_assign=on_assign, on_revoke=on_revoke,
                           on_lost=on_revoke)
        while not slow.rebuilt.is_set():
            newcomer.consume(10, 0.2)
        assert not got_while_rebuilding, \
            f"the newcomer got {sorted(got_while_rebuilding)} while the member rebuilt past its interval"
        took = slow.metrics.registry.get_sample_value("agentgov_state_rebuild_duration_seconds_sum",
                                                      {"role": slow.role})
        assert took is not None and took >= busy  # timed (and, past half the interval, logged as a warning)
        assert wait_until(lambda: newcomer.consume(10, 0.2) is not None and len(got) == partitions // 2
                          and len(slow.owned) == partitions - len(got), 60), \
            f"newcomer {sorted(got)}, rebuilt member {sorted(slow.owned)}"
        assert sorted(slow.forgotten) == sorted(got), "the rebuilt member gave up more than the newcomer's share"
    finally:
        newcomer.close()
        stop.set()
        thread.join(60)
