"""A fact the correlator cannot decode is dead-lettered in the batch's transaction, its payload cut to fit:
forwarded whole, one near the broker's size limit was refused by the producer, the batch aborted and was read
again, and the partition never moved on."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

from pipeline.correlator import Correlator
from pipeline.deadletters import header
from pipeline.fact_reader import FactReader
from pipeline.facts import FACT
from pipeline.limits import Limits
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import FakeMessage


class _Capturing:
    """A real producer's local checks (message.max.bytes), never connected; keeps what it accepted."""

    def __init__(self, settings: Settings) -> None:
        self.real = Producer({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": settings.max_message_bytes})
        self.sent: list[tuple[str, bytes, bytes | None, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None) -> None:
        self.real.produce(topic, value, key=key, headers=headers)  # raises MSG_SIZE_TOO_LARGE as librdkafka does
        self.sent.append((topic, value, key, headers))


def test_an_undecodable_fact_near_the_size_limit_is_dead_lettered_cut_and_the_batch_goes_on() -> None:
    settings = Settings()
    c: Any = Correlator.__new__(Correlator)
    c.settings, c.limits, c.states, c._edges_known = settings, Limits.from_settings(settings), {}, {}
    c.reader = FactReader(Serde(SchemaSet.load(), record=FACT))
    c.graph = type("NoEdges", (), {"read": 0})()
    producer = _Capturing(settings)
    c.checkpoint = type("Checkpoint", (), {"producer": producer})()
    big = b"\x00" + b"\xff" * (settings.max_message_bytes - 200)  # not a framed fact: undecodable
    msg = FakeMessage(big, topic=settings.topic_facts_by_target, offset=42, key=b"k" * 5000)  # key over its limit
    tally = c.handle([msg])
    assert sum(tally.dead.values()) == 1 and tally.facts == 0
    [(topic, value, key, headers)] = producer.sent
    assert topic == settings.topic_dlq
    assert 0 < len(value) <= c.limits.dlq_payload_bytes and big.startswith(value)
    assert key is not None and len(key) < 5000
    assert header(headers, "agentgov.payload.bytes") == str(len(big))
    assert header(headers, "agentgov.payload.truncated") == "1"
    assert header(headers, "agentgov.error.reason") == next(iter(tally.dead))
    assert header(headers, "agentgov.source.offset") == "42"
    producer.real.purge()
    producer.real.flush(0)
