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

import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.drafts import draft
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
