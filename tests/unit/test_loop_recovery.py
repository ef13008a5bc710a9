"""The batch loop rides through a cluster failing over: aborting, rewinding and reading committed offsets
on assignment are retried while the transaction coordinator or a partition leader is away, instead of
letting a KafkaException end the process (a scorer died that way in a broker-failover run on CI)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline import loop
from pipeline.loop import TransactionalLoop
from pipeline.metrics import Metrics
from pipeline.settings import Settings

_clock = [1000.0]


def _unavailable() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "coordinator away"))


class _Consumer:
    def __init__(self, committed_failures: int) -> None:
        self.committed_failures = committed_failures
        self.seeks: list[tuple[int, int]] = []
        self.assigned: list[int] = []
        self.parts = [TopicPartition("t", 0, 5), TopicPartition("t", 1, -1001)]

    def assignment(self) -> list[TopicPartition]:
        return self.parts

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        if self.committed_failures:
            self.committed_failures -= 1
            raise _unavailable()
        return self.parts

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [tp.partition for tp in partitions]


class _Checkpoint:
    def __init__(self, recover_failures: int) -> None:
        self.recover_failures = recover_failures
        self.recovered = 0

    def begin(self) -> None:
        pass

    def commit(self, *, wrote: bool = True) -> None:
        raise _unavailable()  # the batch's transaction fails: the coordinator just died

    def recover(self) -> None:
        if self.recover_failures:
            self.recover_failures -= 1
            raise _unavailable()
        self.recovered += 1


class _Role(TransactionalLoop):
    role = "scorer"

    def __init__(self, consumer: _Consumer, checkpoint: _Checkpoint) -> None:  # no broker: the parts only
        self.consumer = consumer
        self.checkpoint = checkpoint  # type: ignore[assignment]
        self.metrics = Metrics(CollectorRegistry())
        self.settings = Settings.load(kafka_bootstrap="127.0.0.1:9", max_poll_interval_seconds=60)
        self._stop = threading.Event()
        self._registry_backoff = 0.0
        self.rebuilt: list[int] = []

    rebuild_seconds = 0.0
    """How long each rebuilt partition takes, on the test's clock."""

    def rebuild(self, tp: TopicPartition) -> None:
        self.rebuilt.append(tp.partition)
        _clock[0] += self.rebuild_seconds

    def handle(self, msgs: list[Any]) -> None:
        return None


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop.time, "sleep", lambda _s: None)
    monkeypatch.setattr(loop.time, "monotonic", lambda: _clock[0])


def test_an_aborted_batch_is_rewound_even_when_abort_and_committed_offsets_fail_at_first() -> None:
    role = _Role(_Consumer(committed_failures=2), _Checkpoint(recover_failures=3))
    role.process([])  # must not raise
    assert role.checkpoint.recovered >= 1  # type: ignore[attr-defined]
    assert role.consumer.seeks == [(0, 5), (1, 0)]
    assert role.rebuilt == [0, 1]


def test_a_stopping_process_abandons_the_rewind_instead_of_retrying_forever() -> None:
    role = _Role(_Consumer(committed_failures=10**6), _Checkpoint(recover_failures=0))
    role._stop.set()
    role.process([])
    assert role.consumer.seeks == []


def test_assignment_retries_committed_offsets_then_rebuilds_each_partition() -> None:
    consumer = _Consumer(committed_failures=3)
    role = _Role(consumer, _Checkpoint(0))
    role._on_assign(consumer, consumer.parts)
    assert consumer.assigned == [0, 1]  # taken before the rebuild: see the Kafka test in test_membership.py
    assert role.rebuilt == [0, 1]
    assert consumer.committed_failures == 0


def test_assignment_gives_up_after_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "ASSIGN_RETRY_SECONDS", 0.0)
    consumer = _Consumer(committed_failures=10**6)
    role = _Role(consumer, _Checkpoint(0))
    with pytest.raises(KafkaException):
        role._on_assign(consumer, consumer.parts)
    assert role.rebuilt == []


def _rebuild_seconds(role: _Role) -> tuple[float, float]:
    """Count and sum of ``agentgov_state_rebuild_duration_seconds`` for the role."""
    reg = role.metrics.registry
    labels = {"role": role.role}
    return (reg.get_sample_value("agentgov_state_rebuild_duration_seconds_count", labels) or 0.0,
            reg.get_sample_value("agentgov_state_rebuild_duration_seconds_sum", labels) or 0.0)


@pytest.mark.parametrize(("per_partition", "warned"), [(10.0, False), (15.0, True)])
def test_a_rebuild_is_timed_and_one_past_half_the_poll_interval_is_a_warning(
    per_partition: float, warned: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    """Two partitions rebuilt in 20 s of a 60 s interval: timed only; in 30 s: a warning naming the setting."""
    consumer = _Consumer(committed_failures=0)
    role = _Role(consumer, _Checkpoint(0))
    role.rebuild_seconds = per_partition
    with caplog.at_level("WARNING", logger="pipeline.loop"):
        role._on_assign(consumer, consumer.parts)
    assert _rebuild_seconds(role) == (1.0, 2 * per_partition)
    warnings = [r for r in caplog.records if r.getMessage() == "state rebuild took over half of max.poll.interval.ms"]
    assert len(warnings) == int(warned)
    if warned:
        kv = warnings[0].kv  # type: ignore[attr-defined]
        assert kv["cause"] == "assignment" and kv["seconds"] == 30.0 and kv["max_poll_interval_seconds"] == 60
        assert "AGENTGOV_MAX_POLL_INTERVAL_SECONDS" in kv["hint"]


def test_an_empty_assignment_is_not_a_rebuild() -> None:
    consumer = _Consumer(committed_failures=0)
    consumer.parts = []
    role = _Role(consumer, _Checkpoint(0))
    role._on_assign(consumer, [])
    assert _rebuild_seconds(role) == (0.0, 0.0)
