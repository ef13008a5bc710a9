"""StallWatch: a partition with records waiting that delivers nothing for ``stall_seconds`` ends the role; a
caught-up partition, a broker that does not answer, a record produced a moment before the question and a
batch rewound again and again (a registry outage) do not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.liveness import ConsumerStalled, StallWatch


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class _Msg:
    def __init__(self, topic: str, partition: int) -> None:
        self._t, self._p = topic, partition

    def topic(self) -> str:
        return self._t

    def partition(self) -> int:
        return self._p


class _Consumer:
    """Two partitions of topic t; ``at`` is the consumer's position, ``end`` the broker's high watermark."""

    def __init__(self) -> None:
        self.at = {0: 10, 1: 10}
        self.end = {0: 10, 1: 10}
        self.committed_at = {0: 10, 1: 10}
        self.down = False
        self.asked = 0

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("t", p) for p in self.at]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.at[tp.partition]) for tp in tps]

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.committed_at[tp.partition]) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0, cached: bool = True) -> tuple[int, int]:
        assert not cached, "a consumer that does not fetch never updates the cached watermark"
        self.asked += 1
        if self.down:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "broker down"))
        return 0, self.end[tp.partition]


def _watch(seconds: float = 120.0) -> tuple[StallWatch, _Consumer, _Clock]:
    consumer, clock = _Consumer(), _Clock()
    return StallWatch(consumer, "scorer", seconds, clock=clock), consumer, clock


def _run(watch: StallWatch, clock: _Clock, seconds: float, deliver: Sequence[int] = (), step: float = 2.0) -> None:
    """The loop for ``seconds``: a batch of the ``deliver`` partitions every 0.2 s, a check every ``step``."""
    end = clock.t + seconds
    next_check = clock.t
    while clock.t < end:
        watch.delivered([_Msg("t", p) for p in deliver])
        if clock.t >= next_check:
            watch.check()
            next_check = clock.t + step
        clock.t += 0.2


def test_a_partition_with_records_waiting_and_nothing_delivered_is_stalled() -> None:
    watch, consumer, clock = _watch()
    consumer.end[1] = 15  # partition 1 has 5 records the consumer is never handed; partition 0 flows
    with pytest.raises(ConsumerStalled) as raised:
        _run(watch, clock, 400, deliver=[0])
    waited = clock.t - 1000.0
    assert 150 <= waited <= 156, waited  # the period, then a quarter of it at the same place
    assert raised.value.fields["partitions"] == [{"topic": "t", "partition": 1, "at": 10, "end": 15}]
    assert "t[1] at 10 of 15" in str(raised.value)


def test_caught_up_partitions_are_not_stalled_and_the_broker_is_asked_once_a_period() -> None:
    watch, consumer, clock = _watch()
    _run(watch, clock, 1000)  # idle: nothing delivered, nothing waiting
    assert consumer.asked <= 2 * (1000 // 120 + 1)


def test_a_record_produced_just_before_the_question_is_not_a_stall() -> None:
    watch, consumer, clock = _watch()
    _run(watch, clock, 119)  # idle for nearly the period: a check soon asks the broker
    consumer.end[0] = 11  # a record lands; the question sees it waiting, a suspect
    _run(watch, clock, 4)
    assert watch.suspects == {("t", 0): 10}
    consumer.at[0] = 11  # the next fetch delivers it
    _run(watch, clock, 60, deliver=[0])
    assert not watch.suspects


def test_a_suspect_that_moved_on_without_a_sampled_batch_is_not_stalled() -> None:
    watch, consumer, clock = _watch()
    _run(watch, clock, 119)
    consumer.end[0] = 30
    _run(watch, clock, 4)
    assert watch.suspects == {("t", 0): 10}
    consumer.at[0] = 20  # delivered in batches the sampling did not look at; still behind
    _run(watch, clock, 31)
    assert watch.suspects == {("t", 0): 20}  # asked again from where it stands now


def test_a_rewound_batch_delivered_again_and_again_is_not_a_stall() -> None:
    # A registry outage: each batch is consumed, fails and is rewound, so the position stays at the committed
    # offset and the log end stays ahead; but the partition is delivered, so the loop is not wedged.
    watch, consumer, clock = _watch()
    consumer.end[0] = 500
    _run(watch, clock, 600, deliver=[0])


def test_a_broker_that_does_not_answer_postpones_the_check() -> None:
    watch, consumer, clock = _watch()
    consumer.end[1] = 15
    consumer.down = True
    _run(watch, clock, 600, deliver=[0])  # an outage: no verdict, and no restart loop
    consumer.down = False
    with pytest.raises(ConsumerStalled):
        _run(watch, clock, 400, deliver=[0])


def test_nothing_delivered_since_assignment_stands_at_the_committed_offset() -> None:
    watch, consumer, clock = _watch()
    consumer.at[1] = -1001  # no position yet
    consumer.committed_at[1] = 15
    consumer.end[1] = 15
    _run(watch, clock, 400, deliver=[0])  # committed at the end: nothing waiting
    consumer.end[1] = 16
    with pytest.raises(ConsumerStalled) as raised:
        _run(watch, clock, 400, deliver=[0])
    assert raised.value.fields["partitions"][0]["at"] == 15


def test_a_revoked_partition_is_forgotten_and_zero_seconds_disables() -> None:
    watch, consumer, clock = _watch()
    consumer.end[1] = 15
    _run(watch, clock, 100, deliver=[0])
    del consumer.at[1]  # revoked before its period was over
    _run(watch, clock, 400, deliver=[0])
    assert ("t", 1) not in watch.last
    off, consumer, clock = _watch(0)
    consumer.end[1] = 15
    _run(off, clock, 1000, deliver=[0])
    assert consumer.asked == 0


def test_the_role_exits_75_for_its_supervisor(monkeypatch: Any) -> None:
    from consumers import _main

    class _Loop:
        def run(self, stop: Any) -> None:
            raise ConsumerStalled("scorer: stalled", partitions=[])

    assert _main.run(_Loop(), None) == 75  # type: ignore[arg-type]
