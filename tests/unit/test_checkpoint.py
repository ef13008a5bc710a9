"""The transactional checkpoint's watchdog: a librdkafka call blocked past its own timeout fails the batch
and gets the producer replaced, instead of holding the consumer's partitions forever."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from pipeline import checkpoint
from pipeline.checkpoint import Checkpoint


class _Producer:
    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.aborted = 0

    def send_offsets_to_transaction(self, *_: Any) -> None:
        self.release.wait()  # blocks like rd_kafka_send_offsets_to_transaction after a coordinator death

    def commit_transaction(self, *_: Any) -> None:
        pass

    def abort_transaction(self, *_: Any) -> None:
        self.aborted += 1


class _Consumer:
    def assignment(self) -> list[Any]:
        return []

    def position(self, _: Any) -> list[Any]:
        return []

    def consumer_group_metadata(self) -> object:
        return object()


def _checkpoint(producer: _Producer) -> Checkpoint:
    cp = Checkpoint.__new__(Checkpoint)
    cp.consumer = _Consumer()  # type: ignore[assignment]
    cp.producer = producer  # type: ignore[assignment]
    cp._abandoned, cp._hung = [], False
    return cp


def test_a_blocked_commit_fails_the_batch_and_the_producer_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "HANG_GRACE_SECONDS", 0.2)
    release = threading.Event()
    hung = _Producer(release)
    cp = _checkpoint(hung)
    replaced: list[bool] = []
    monkeypatch.setattr(cp, "new_producer", lambda flush_old=True: replaced.append(flush_old))
    # The call's own timeout is 30 s; shrink it for the test through _bounded.
    with pytest.raises(KafkaException) as err:
        cp._bounded("send_offsets_to_transaction", lambda: hung.send_offsets_to_transaction(), 0.1)
    assert err.value.args[0].code() == KafkaError._TIMED_OUT
    cp.recover()
    assert replaced == [False] and hung.aborted == 0  # no abort on the blocked handle: it would block too
    assert cp._abandoned == [hung] and not cp._hung  # kept, never destroyed with a call in flight
    release.set()


def test_errors_of_the_call_reach_the_caller_and_a_normal_failure_aborts() -> None:
    cp = _checkpoint(_Producer(threading.Event()))

    def fail() -> None:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "down"))

    with pytest.raises(KafkaException) as err:
        cp._bounded("commit_transaction", fail, 1.0)
    assert err.value.args[0].code() == KafkaError._TRANSPORT
    cp.recover()
    assert cp.producer.aborted == 1 and not cp._abandoned  # type: ignore[attr-defined]


def test_a_refused_record_serves_its_delivery_reports_then_aborts_and_replaces_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The delivery report of a record the broker refused sets replace_after_abort (Scorer._on_delivery);
    it is served before the abort, and the producer, whose idempotent sequence is broken, is replaced."""
    old = _Producer(threading.Event())
    cp = _checkpoint(old)

    reports = [True]  # one refused record's report is queued

    def poll(_: float) -> int:
        if reports:  # the scorer's per-message callback on MSG_SIZE_TOO_LARGE
            cp.replace_after_abort = reports.pop()
        return 1

    old.poll = poll  # type: ignore[attr-defined]
    replaced: list[bool] = []
    monkeypatch.setattr(cp, "new_producer", lambda: replaced.append(True))
    cp.recover()
    assert old.aborted == 1 and replaced == [True] and not cp.replace_after_abort
    cp.recover()  # a normal failure afterwards: abort only
    assert old.aborted == 2 and replaced == [True]


def test_a_batch_without_records_commits_its_positions_directly_and_sends_none_to_a_transaction(
        caplog: pytest.LogCaptureFixture) -> None:
    """``commit(wrote=False)``: no AddOffsetsToTxn/TxnOffsetCommit (``send_offsets_to_transaction``), the empty
    transaction ended (librdkafka does that without the broker), the positions committed directly; a direct
    commit that fails is logged and left to the next batch (``test_replay.py`` drives the same path on Tansu
    and Kafka)."""
    from confluent_kafka import TopicPartition

    calls: list[str] = []

    class Producer(_Producer):
        def send_offsets_to_transaction(self, *_: Any) -> None:
            calls.append("send_offsets")

        def commit_transaction(self, *_: Any) -> None:
            calls.append("commit_transaction")

    class Consumer(_Consumer):
        fail = False

        def assignment(self) -> list[Any]:
            return [TopicPartition("facts", 0), TopicPartition("facts", 1)]

        def position(self, _: Any) -> list[Any]:
            return [TopicPartition("facts", 0, 42), TopicPartition("facts", 1, -1001)]  # 1: nothing consumed

        def commit(self, offsets: list[Any], asynchronous: bool) -> None:
            calls.append(f"commit {[(tp.partition, tp.offset) for tp in offsets]} async={asynchronous}")
            if self.fail:
                raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS, "rebalancing"))

    cp = _checkpoint(Producer(threading.Event()))
    cp.consumer = Consumer()  # type: ignore[assignment]
    cp.commit(wrote=False)
    assert calls == ["commit_transaction", "commit [(0, 42)] async=False"]

    calls.clear()
    cp.commit(wrote=True)  # a batch with records: the positions go into its transaction, no direct commit
    assert calls == ["send_offsets", "commit_transaction"]

    calls.clear()
    cp.consumer.fail = True  # type: ignore[attr-defined]
    cp.commit(wrote=False)  # does not raise: nothing was produced, the next batch's commit carries the positions
    assert calls == ["commit_transaction", "commit [(0, 42)] async=False"]
    assert "direct offset commit of a batch without records failed" in caplog.text
