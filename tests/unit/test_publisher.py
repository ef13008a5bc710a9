"""The SDK validates before sending, fills ids and evidence, chains runs, and surfaces delivery failures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import KafkaError, KafkaException

from pipeline.broker import free_port
from pipeline.drafts import draft
from pipeline.errors import PublishError
from pipeline.events import event_hash
from pipeline.publisher import EventInvalid, TransitionPublisher, loads
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import FakeProducer


def make(fail: bool = False) -> tuple[TransitionPublisher, FakeProducer]:
    producer = FakeProducer(fail)
    return TransitionPublisher(Settings(), serde=Serde(SchemaSet.load()), producer=producer), producer  # type: ignore[arg-type]


def test_fills_ids_and_chains_each_run() -> None:
    pub, _ = make()
    a0 = pub.complete(draft(run_id="a", step=0))
    b0 = pub.complete(draft(run_id="b", step=0))
    a1 = pub.complete(draft(run_id="a", step=1))
    assert a0["evidence"]["prev_event_hash"] is None
    assert a1["evidence"]["prev_event_hash"] == a0["evidence"]["event_hash"]
    assert b0["evidence"]["prev_event_hash"] is None
    assert a1["evidence"]["event_hash"] == event_hash(a1)
    assert len(a0["event_id"]) == 36 and isinstance(a0["occurred_at"], int)


def test_publish_keys_by_run_id() -> None:
    pub, producer = make()
    pub.publish(draft(run_id="run-42"))
    pub.flush()
    topic, value, key = producer.sent[0]
    assert topic == "agentgov.transitions.v1" and key == b"run-42" and value[:2] == b"\xc3\x01"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"resource.privilege_tier": 7}, "resource.privilege_tier"),
        ({"step": -1}, "step"),
        ({"action": "make_coffee"}, "action"),
        ({"agent.agent_id": ""}, "agent.agent_id"),
        ({"target.identity_id": "u-step\u200b"}, "target.identity_id"),
        ({"decision.approved_by": "mgr\u2060-eng"}, "decision.approved_by"),
        ({"occurred_at": "2026-01-01T00:00:00"}, "occurred_at"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_event_raises_naming_the_field_and_sends_nothing(changes: dict, field: str) -> None:
    pub, producer = make()
    with pytest.raises(EventInvalid) as info:
        pub.publish(draft(**changes))
    assert field in str(info.value)
    assert field in info.value.fields["paths"]
    assert producer.sent == []


def test_an_id_with_an_invisible_character_is_refused_naming_the_field_and_the_code_point() -> None:
    """'u-step\u200b' would be another identity than 'u-step' to every rule and key: the SDK refuses it,
    saying which character by its code point, never echoing it."""
    pub, producer = make()
    with pytest.raises(EventInvalid) as info:
        pub.publish(draft(**{"agent.on_behalf_of": "svc-iga\u200b"}))
    text = str(info.value)
    assert info.value.fields["paths"] == ["agent.on_behalf_of"]
    assert "agent.on_behalf_of" in text and "U+200B ZERO WIDTH SPACE" in text and "\u200b" not in text
    assert producer.sent == []


def test_a_key_named_in_an_error_is_shown_inert_and_cut() -> None:
    pub, producer = make()
    hostile = "x\x1b]8;;http://evil\x07" + "y" * 5000
    with pytest.raises(EventInvalid) as info:
        pub.publish(draft(**{hostile: 1}))
    text = str(info.value)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text and len(text) < 400
    assert info.value.fields["paths"][0].startswith("x\\x1b]8;;http://evil")
    assert producer.sent == []


@pytest.mark.parametrize("line", [
    '{"event_id": "a", "run_id": "r", "event_id": "b"}',
    '{"agent": {"agent_id": "agent-1", "agent_id": "agent-2"}}',
])
def test_json_that_repeats_a_key_is_refused_not_resolved(line: str) -> None:
    """Parsers disagree on a repeated key (first, last, both): what a reviewer reads and what is sent could
    differ, so the line is refused, naming the key."""
    with pytest.raises(EventInvalid, match="duplicate key") as info:
        loads(line)
    assert info.value.fields["paths"] in (["event_id"], ["agent_id"])
    nested = '{"a": {"b": 1}, "c": [{"b": 2}, {"b": 3}]}'  # one key in several objects is no repeat
    assert loads(nested) == json.loads(nested)
    with pytest.raises(json.JSONDecodeError):
        loads("not json")


def test_delivery_failures_reach_the_caller() -> None:
    pub, _ = make(fail=True)
    seen: list[str] = []
    pub.on_error = lambda event_id, err: seen.append(event_id)
    event_id = pub.publish(draft())
    with pytest.raises(PublishError) as info:
        pub.flush()
    assert info.value.fields["event_ids"] == [event_id]
    assert seen == [event_id]


class _StuckProducer(FakeProducer):
    """A broker that never answers within the flush: no delivery report at all (librdkafka's flush
    returns the count still queued)."""

    def poll(self, timeout: float = 0) -> int:
        return len(self.pending)

    def flush(self, timeout: float = 0) -> int:
        return len(self.pending)


def test_a_flush_that_times_out_names_every_undelivered_event() -> None:
    producer = _StuckProducer()
    pub = TransitionPublisher(Settings(), serde=Serde(SchemaSet.load()), producer=producer)  # type: ignore[arg-type]
    sent = [pub.publish(draft(run_id=f"run-{i}")) for i in range(3)]
    producer.pending.pop(1)(None, None)  # one delivered before the broker went quiet
    with pytest.raises(PublishError) as info:
        pub.flush(1)
    assert info.value.fields["pending"] == 2
    assert info.value.fields["event_ids"] == sorted([sent[0], sent[2]])


def test_registry_that_never_answers_is_a_publish_error_and_nothing_is_sent() -> None:
    # The SDK waits schema_registry_wait_seconds for its first registration (test_registry.py shows it
    # waiting out a 30 s outage); past that the caller gets reason "registry", and nothing was produced.
    settings = Settings(schema_registry_url=f"http://127.0.0.1:{free_port()}", schema_registry_timeout_seconds=0.5,
                        schema_registry_wait_seconds=1.0)
    producer = FakeProducer()
    pub = TransitionPublisher(settings, producer=producer)  # type: ignore[arg-type]
    with pytest.raises(PublishError) as caught:
        pub.publish(draft())
    assert caught.value.reason == "registry"
    assert producer.sent == []


class _FatalOnFlush(FakeProducer):
    """An idempotent producer whose sequence the broker lost (a Tansu restart): confluent-kafka 2.16 raised
    the fatal error out of flush() as a SystemError caused by the KafkaException, no delivery report served."""

    def flush(self, timeout: float = 0) -> int:
        fatal = KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "sequence desynchronization",
                                          fatal=True))
        try:
            raise fatal
        except KafkaException as exc:
            raise SystemError("<method 'code' of 'KafkaError' objects> returned a result with an exception set") \
                from exc

    def poll(self, timeout: float = 0) -> int:
        return len(self.pending)

    def purge(self) -> None:
        self.pending.clear()


def owning(monkeypatch: pytest.MonkeyPatch, *producers: FakeProducer) -> TransitionPublisher:
    """A publisher that made its own producer (so it may replace it): ``producers`` in the order it makes them."""
    made = iter(producers)
    monkeypatch.setattr(TransitionPublisher, "_new_producer", lambda self: next(made))
    return TransitionPublisher(Settings(), serde=Serde(SchemaSet.load()))


def test_a_fatal_producer_error_out_of_flush_names_every_undelivered_event_and_a_new_producer_carries_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    failing, fresh = _FatalOnFlush(), FakeProducer()
    pub = owning(monkeypatch, failing, fresh)
    sent = [pub.publish(draft(run_id=f"run-{i}")) for i in range(3)]
    with pytest.raises(PublishError) as info:
        pub.flush(5)
    assert info.value.fields["event_ids"] == sorted(sent)  # the caller resends these (stored once by event_id)
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in info.value.message or "sequence" in info.value.message
    assert pub.producer is fresh and failing.pending == []
    again = pub.publish(draft(run_id="run-9"))
    pub.flush(5)
    assert pub.delivered == 1 and fresh.sent[0][2] == b"run-9" and again not in sent


def test_a_fatal_error_reported_by_the_error_callback_is_raised_by_the_next_flush(
        monkeypatch: pytest.MonkeyPatch) -> None:
    stuck, fresh = _StuckProducer(), FakeProducer()
    pub = owning(monkeypatch, stuck, fresh)
    sent = pub.publish(draft())
    pub._client_error(KafkaError(KafkaError._FATAL, "fatal idempotent producer error", fatal=True))
    with pytest.raises(PublishError) as info:
        pub.flush(1)
    assert info.value.fields["event_ids"] == [sent] and pub.producer is fresh


def test_a_produce_call_refused_because_the_producer_failed_fatally_replaces_the_producer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After a fatal error librdkafka's produce() refuses every record with _FATAL, an error not flagged fatal,
    sometimes before the error callback reports the fatal error (CI, a Tansu restart): every event in flight is
    named, the producer replaced, and the next event goes out on the new one."""
    class Failed(FakeProducer):
        def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
            if self.sent:  # the first record was taken; then the producer failed
                raise KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error"))
            super().produce(topic, value, key, on_delivery)

        def poll(self, timeout: float = 0) -> int:
            return 0  # the first record's delivery report never comes

        def purge(self) -> None:
            self.pending.clear()

    failed, fresh = Failed(), FakeProducer()
    pub = owning(monkeypatch, failed, fresh)
    first = pub.publish(draft(run_id="run-1"))
    with pytest.raises(PublishError) as info:
        pub.publish(draft(run_id="run-2"))
    ids = info.value.fields["event_ids"]
    assert len(ids) == 2 and first in ids and pub.producer is fresh
    again = pub.publish(draft(run_id="run-3"))
    pub.flush(5)
    assert fresh.sent[0][2] == b"run-3" and again not in ids


@pytest.mark.parametrize("code", [KafkaError.PRODUCER_FENCED, KafkaError._MSG_TIMED_OUT])
def test_a_fenced_producer_is_replaced_and_the_events_it_refused_are_named(monkeypatch: pytest.MonkeyPatch,
                                                                            code: int) -> None:
    """A delivery report of PRODUCER_FENCED (a restarted broker without its state) is not flagged fatal, but the
    producer will refuse every later record the same way: the flush names the refused events and a new producer
    delivers the next ones. So for a record that timed out: a Tansu broker restarted without its state answers
    UNKNOWN_PRODUCER_ID to the old producer's every request, librdkafka bumps its epoch and sends again, and
    every later record timed out too (session 26: nothing delivered for minutes); a new producer gets a
    producer id the broker knows."""
    class Fenced(FakeProducer):
        def flush(self, timeout: float = 0) -> int:
            pending, self.pending = self.pending, []
            for cb in pending:
                cb(KafkaError(code, "refused"), None)
            return 0

        def poll(self, timeout: float = 0) -> int:
            return len(self.pending)  # the reports come with the flush

    fenced, fresh = Fenced(), FakeProducer()
    pub = owning(monkeypatch, fenced, fresh)
    sent = [pub.publish(draft(run_id=f"run-{i}")) for i in range(2)]
    with pytest.raises(PublishError) as info:
        pub.flush(5)
    assert sorted(info.value.fields["event_ids"]) == sorted(sent) and pub.producer is fresh
    again = pub.publish(draft(run_id="run-9"))
    pub.flush(5)
    assert pub.delivered == 1 and fresh.sent[0][2] == b"run-9" and again not in sent


def test_a_record_the_producer_refuses_fails_that_event_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing(FakeProducer):
        def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "too large"))

    refusing = Refusing()
    pub = owning(monkeypatch, refusing)
    with pytest.raises(PublishError) as info:
        pub.publish(draft())
    assert len(info.value.fields["event_ids"]) == 1 and pub.producer is refusing  # not replaced
    pub.flush(1)  # nothing left in flight


class _UnknownTopic(FakeProducer):
    """Knows the topic is missing once its metadata is in: refuses the first ``after`` records at delivery (the
    metadata was not in yet) and every later one at ``produce``, as librdkafka does."""

    def __init__(self, after: int) -> None:
        super().__init__(fail=True)
        self.after = after

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        if len(self.sent) >= self.after:
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC, "Local: Unknown topic"))
        super().produce(topic, value, key, on_delivery)


@pytest.mark.parametrize("after", [0, 1, 3])
def test_publish_counts_and_names_every_undelivered_line_however_the_producer_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    """Whether the producer refuses a record at ``produce`` or in its delivery report (a race on when the
    topic's metadata arrives), `agentgov publish` goes on, names the line and sums them up; it exits 9."""
    import pipeline.broker
    from pipeline.cli import Exit, main

    producer = _UnknownTopic(after)
    monkeypatch.setattr(pipeline.broker, "probe", lambda *a, **k: None)
    monkeypatch.setattr(TransitionPublisher, "_new_producer", lambda self: producer)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(draft(run_id=f"run-{i}"), default=str) + "\n" for i in range(3)))
    result = CliRunner().invoke(main, ["publish", str(path)], env={"AGENTGOV_KAFKA_BOOTSTRAP": "127.0.0.1:1"})
    assert result.exit_code == Exit.UNDELIVERED, result.output
    assert f"accepted {min(after, 3)}, rejected 0, undelivered 3" in result.output, result.output
    named = {line.split(":")[1] for line in result.output.splitlines()
             if line.startswith(f"{path}:") and ": not delivered" in line}
    assert named == {"1", "2", "3"}, result.output  # each line by its number
