"""A fact the correlator cannot decode is dead-lettered in the batch's transaction, its payload cut to fit:
forwarded whole, one near the broker's size limit was refused by the producer, the batch aborted and was read
again, and the partition never moved on."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import Producer

from pipeline.correlator import Correlator
from pipeline.deadletters import header
from pipeline.errors import ValidationError
from pipeline.fact_reader import FactReader
from pipeline.facts import FACT
from pipeline.limits import STORE_TIME_MIN_MS, Limits, check_fact_time
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


def _judge(settings: Settings, sources: int | None = 6) -> tuple[Any, _Capturing]:
    """The judging half of a Correlator (no consumer, no graph follower) and the producer it dead-letters
    into; ``sources``: the scorers' input partitions, as the broker would answer (None: not asked yet)."""
    c: Any = Correlator.__new__(Correlator)
    c.settings, c.limits, c.states, c._edges_known = settings, Limits.from_settings(settings), {}, {}
    c.reader = FactReader(Serde(SchemaSet.load(), record=FACT))
    c.graph = type("NoEdges", (), {"read": 0})()
    if sources is not None:
        c._sources = sources
    producer = _Capturing(settings)
    c.checkpoint = type("Checkpoint", (), {"producer": producer})()
    return c, producer


def test_an_undecodable_fact_near_the_size_limit_is_dead_lettered_cut_and_the_batch_goes_on() -> None:
    settings = Settings()
    c, producer = _judge(settings)
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


def test_a_fact_with_a_forged_time_is_dead_lettered_not_held() -> None:
    """Audit P4: a schema-valid fact stamped at int64 max was taken into the correlator's state with no dead
    letter. Read live, a fact further ahead of the clock than the skew, or before 1900, is dead-lettered
    ``invalid_value`` naming ``occurred_at``, and nothing of it is held; the replay and holdings path
    (``_decode``) refuses it too. An old fact is not refused, live or replayed: the scorer bounded its age
    when it accepted the event, and a holding counts whatever its age."""
    import time

    from pipeline.facts import fact_from_event
    from tests.unit.scoring_factory import event

    settings = Settings()
    serde = Serde(SchemaSet.load(), record=FACT)
    c, producer = _judge(settings)
    now = int(time.time() * 1000)

    def fact(occurred_at: int, offset: int) -> FakeMessage:
        f = fact_from_event(event(), 0, offset)
        f["occurred_at"] = occurred_at
        return FakeMessage(serde.encode(f), topic=settings.topic_facts_by_target, offset=offset)

    forged = [fact(2**63 - 1, 1), fact(-(2**63), 2), fact(now + c.limits.max_future_ms + 60_000, 3)]
    tally = c.handle(forged)
    assert tally.facts == 0 and dict(tally.dead) == {"invalid_value": 3} and c.states == {}
    assert [header(h, "agentgov.error.field") for _, _, _, h in producer.sent] == ["occurred_at"] * 3
    assert [header(h, "agentgov.source.offset") for _, _, _, h in producer.sent] == ["1", "2", "3"]
    assert all(c._decode(m) is None for m in forged)
    old, near = fact(now - 2 * c.limits.max_age_ms, 4), fact(now + c.limits.max_future_ms - 60_000, 5)
    assert c._decode(old) is not None and c._decode(near) is not None
    for ms in (now - 2 * c.limits.max_age_ms, now + c.limits.max_future_ms, STORE_TIME_MIN_MS):  # the live check
        check_fact_time(ms, c.limits, now)
    producer.real.purge()
    producer.real.flush(0)


def test_a_fact_naming_a_source_partition_the_input_topic_lacks_is_dead_lettered() -> None:
    """Each source partition a fact names gets a watermark entry that every batch walks: forged facts naming a
    new partition each grew it without bound. A fact whose ``source_partition`` is not a partition of the
    transitions topic, or whose ``source_offset`` is negative, is dead-lettered ``invalid_value`` naming the
    field, after the broker was asked again (partitions may have been added), at most every 30 s; a partition
    added since is taken, and the states expect it."""
    from pipeline.facts import fact_from_event
    from tests.unit.scoring_factory import event

    settings = Settings()
    serde = Serde(SchemaSet.load(), record=FACT)
    c, producer = _judge(settings, sources=None)
    answers = [6, 6, 8]  # what the broker says of the transitions topic, call by call
    asked: list[int] = []

    class Topics:
        def list_topics(self, topic: str, timeout: float) -> Any:
            asked.append(answers[len(asked)])
            meta = type("Meta", (), {"partitions": dict.fromkeys(range(asked[-1])), "error": None})()
            return type("Metadata", (), {"topics": {topic: meta}})()

    c.consumer = Topics()

    def fact(partition: int, offset: int) -> FakeMessage:
        f = fact_from_event(event(), partition, offset)
        return FakeMessage(serde.encode(f), topic=settings.topic_facts_by_target, offset=offset)

    refused = [fact(6, 1), fact(7, 2), fact(-1, 3), fact(2**40, 4), fact(0, -5)]
    for m in refused:
        with pytest.raises(ValidationError):
            c._check_source(c.reader.read(m.value()))
    assert asked == [6, 6]  # asked at first, and once again for partition 6; not again within 30 s
    assert c._decode(refused[0]) is None
    tally = c.handle(refused)
    assert tally.facts == 0 and dict(tally.dead) == {"invalid_value": 5} and c.states == {}
    assert [header(h, "agentgov.error.field") for _, _, _, h in producer.sent] == [
        "source_partition"] * 4 + ["source_offset"]
    c._sources_asked -= 31  # 30 s on: partitions 6 and 7 were added meanwhile
    state = type("State", (), {"expected_sources": 6})()
    c.states = {("t", 0): state}
    assert c._check_source(c.reader.read(fact(7, 6).value())) == 8
    assert asked == [6, 6, 8] and state.expected_sources == 8
    producer.real.purge()
    producer.real.flush(0)


def test_a_fact_larger_than_any_scorer_writes_is_dead_lettered_and_the_largest_real_one_is_read() -> None:
    """Audit, session 26: two forged by-target facts with one event id and a 300 KB ``run_id`` each made an
    AG-XRN-006 finding of over 1 MB, which the producer refused inside the batch's transaction: the batch was
    aborted and read again, for good. A fact record larger than :data:`FACT_MAX_BYTES` (no scorer writes one:
    its strings are 512 characters at most) is dead-lettered ``oversized`` before it is decoded, live or
    replayed, and nothing of it is held; the largest fact a scorer can write (every string 512 four-byte
    characters, 64 codes) is still read."""
    import time

    from pipeline.facts import fact_from_event
    from pipeline.limits import FACT_MAX_BYTES, IDENT_MAX_CHARS, SCORER_CODES_MAX
    from tests.unit.scoring_factory import event

    settings = Settings()
    serde = Serde(SchemaSet.load(), record=FACT)
    c, producer = _judge(settings)
    now = int(time.time() * 1000)
    forged = []
    for partition in (0, 1):
        f = fact_from_event(event(occurred_at=now - 60_000), partition, 10 + partition)
        f["run_id"] = "R" * 300_000
        forged.append(FakeMessage(serde.encode(f), topic=settings.topic_facts_by_target, offset=100 + partition))
    tally = c.handle(forged)
    assert tally.facts == 0 and dict(tally.dead) == {"oversized": 2} and c.states == {}
    assert [header(h, "agentgov.error.reason") for _, _, _, h in producer.sent] == ["oversized"] * 2
    assert all(c._decode(m) is None for m in forged)

    wide = "\U0001f600" * IDENT_MAX_CHARS  # 2,048 UTF-8 bytes
    f = fact_from_event(event(occurred_at=now - 60_000), 0, 1, [f"AG-{i:061d}" for i in range(SCORER_CODES_MAX)])
    for name in ("event_id", "run_id", "agent_id", "on_behalf_of", "target_id", "target_type", "lifecycle_state",
                 "action", "system", "resource_id", "entitlement", "outcome", "authority", "approved_by",
                 "policy_id", "policy_version", "event_hash"):
        f[name] = wide
    largest = serde.encode(f)
    assert FACT_MAX_BYTES - 4_096 < len(largest) <= FACT_MAX_BYTES
    assert c.reader.read(largest)["run_id"] == wide
    producer.real.purge()
    producer.real.flush(0)


def test_a_finding_too_large_for_a_record_is_dead_lettered_and_still_pages() -> None:
    """Defence in depth behind the fact bound: a finding that does not fit in one record (a chain of a hundred
    facts with long ids) is not produced (the producer's refusal would abort the batch for good): it goes to
    the dead-letter topic ``oversized``, its payload cut and its digest in the headers, and its chain pages."""
    import time

    from prometheus_client import CollectorRegistry

    from pipeline.metrics import Metrics
    from pipeline.scoring.crossrun import XRN_TRANSIENT_PRIVILEGE, CrossRunFinding
    from pipeline.scoring.policy import load_policy
    from tests.unit.scoring_factory import event

    settings = Settings()
    c, producer = _judge(settings)
    c.out = Serde(SchemaSet.load(), record="cross_run_finding")
    c.policy = load_policy(settings.policy_file)
    c.metrics = Metrics(CollectorRegistry())
    ev = {**event(), "source_partition": 0, "source_offset": 1}
    big = CrossRunFinding(XRN_TRANSIENT_PRIVILEGE, "u-1", "m" * 2 * settings.max_message_bytes, (ev,))
    small = CrossRunFinding(XRN_TRANSIENT_PRIVILEGE, "u-2", "fits", (ev,))
    tally = type(c.handle([]))()
    now = int(time.time() * 1000)
    c._publish(big, now, tally)
    c._publish(small, now, tally)
    assert tally.found == [small] and dict(tally.dead) == {"oversized": 1}
    (dlq, value, _, headers), (topic, _, key, _) = producer.sent
    assert dlq == settings.topic_dlq and topic == settings.topic_correlations and key == small.finding_id.encode()
    assert header(headers, "agentgov.source.topic") == settings.topic_correlations
    assert header(headers, "agentgov.payload.truncated") == "1" and len(value) <= c.limits.dlq_payload_bytes
    assert int(header(headers, "agentgov.payload.bytes") or 0) > settings.max_message_bytes
    assert big.finding_id in (header(headers, "agentgov.error.message") or "")
    assert (big.pattern, ev["agent"]["agent_id"], ev["run_id"]) in c.metrics.escalation_ring._order  # paged
    producer.real.purge()
    producer.real.flush(0)
