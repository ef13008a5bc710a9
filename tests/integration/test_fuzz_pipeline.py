"""Every bad input gets a clear answer through the real pipeline: the DLQ with a reason, or a score.

The scorer and the writer run in this process here, because the Confluent-framed cases use a mock://
Schema Registry, which lives in the memory of the process that made it.
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from pipeline.drafts import draft
from pipeline.events import event_hash
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import TRANSITION, SchemaSet, SchemaVersion, _strip_logical
from pipeline.serde import CONFLUENT_MAGIC, SOE_HEADER, Serde, encode_datum
from pipeline.settings import Settings
from tests.support.helpers import InProcess, consume, wait_until

pytestmark = pytest.mark.integration
SCHEMAS = SchemaSet.load()


def read_topic(settings: Settings, topic: str, count: int, timeout: float = 60) -> list[Message]:
    """Read until ``count`` messages or ``timeout``, then 2 s more to catch any surplus."""
    return consume(settings, topic, count, timeout, settle=2.0)


class Inputs:
    """Builds each kind of bad (or odd) input as wire bytes."""

    def __init__(self, pub: TransitionPublisher, registry: Any) -> None:
        self.pub = pub
        self.registry = registry
        self.soe = Serde(SCHEMAS)
        self.confluent = Serde(SCHEMAS, registry, subject="agent-value")
        future = json.loads(SCHEMAS.transition.json())
        for f in future["fields"]:
            if f["name"] == "action":
                f["type"]["symbols"] = [*f["type"]["symbols"], "rotate_secret"]
        self.future = Serde(SCHEMAS, registry, subject="future-agent-value")
        self.future.current = SchemaVersion(TRANSITION, 99, future, _parsed(future))
        v1 = SCHEMAS.versions[TRANSITION][1]
        self.v1_id = registry.register_schema("old-agent-value", Schema(v1.json(), "AVRO"))
        self.v1 = v1

    def record(self, **changes: Any) -> dict[str, Any]:
        changes.setdefault("run_id", f"run-{uuid.uuid4().hex[:12]}")
        return self.pub.complete(draft(**changes))

    def valid(self) -> bytes:
        return self.soe.encode(self.record())

    def bad(self, kind: str) -> bytes:
        rec = self.record()
        soe = self.soe.encode(rec)
        if kind == "garbage_bytes":
            return random.randbytes(40)
        if kind == "truncated_avro":
            return soe[: random.randint(SOE_HEADER + 1, len(soe) - 1)]
        if kind == "unknown_fingerprint":
            return b"\xc3\x01" + random.randbytes(8) + soe[SOE_HEADER:]
        if kind == "unknown_registry_id":
            return CONFLUENT_MAGIC + struct.pack(">I", 900_000 + random.randint(0, 99_999)) + soe[SOE_HEADER:]
        if kind == "wrong_magic":
            return b"\xc3\x02" + soe[2:]
        if kind == "oversized":
            rec["attributes"] = {"blob": "x" * (self.pub.settings.max_message_bytes + 10)}
            return self.soe.encode(rec)
        if kind == "future_enum":
            return self.future.encode(dict(rec, action="rotate_secret"))
        if kind == "tier_out_of_range":
            rec["resource"]["privilege_tier"] = 9
        elif kind == "negative_step":
            rec["step"] = -1
        elif kind == "far_future":
            rec["occurred_at"] += 365 * 24 * 3600 * 1000
        elif kind == "control_chars_in_id":
            rec["target"]["identity_id"] = "u1\x00\x1b[2J"
        elif kind == "invalid_utf8":
            rec["from_state"] = "Z" * 8
            return self.soe.encode(rec).replace(b"Z" * 8, b"\xff\xfe\xfd\xfcZZZZ")
        else:
            raise ValueError(kind)
        return self.soe.encode(rec)


def _parsed(raw: dict[str, Any]) -> Any:
    from fastavro import parse_schema

    return parse_schema(_strip_logical(raw))


BAD: dict[str, str] = {  # kind -> DLQ reason
    "garbage_bytes": "bad_magic",
    "truncated_avro": "truncated",
    "unknown_fingerprint": "unknown_schema",
    "unknown_registry_id": "unknown_schema",
    "wrong_magic": "bad_magic",
    "oversized": "oversized",
    "future_enum": "unknown_enum",
    "tier_out_of_range": "invalid_value",
    "negative_step": "invalid_value",
    "far_future": "invalid_value",
    "control_chars_in_id": "invalid_value",
    "invalid_utf8": "invalid_utf8",
}


def registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})


def test_each_bad_input_is_dead_lettered_with_its_reason_or_scored(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings, Any], InProcess],
) -> None:
    settings = settings_factory(max_message_bytes=8192)
    reg = registry()
    pipe = in_process(settings, reg)
    pub = publisher_factory(settings)
    inputs = Inputs(pub, reg)
    raw = pub.producer

    for kind in BAD:
        raw.produce(settings.topic_transitions, inputs.bad(kind), key=kind.encode())
    # Odd but valid: scored, and stored verbatim.
    odd = inputs.record(from_state="line1\nline2\t\x07bell", to_state="ok")
    pub.send(odd)
    confluent = inputs.record()
    raw.produce(settings.topic_transitions, inputs.confluent.encode(confluent), key=b"confluent")
    old = inputs.record()
    old_v1 = {k: v for k, v in old.items() if k != "tenant"}
    old_v1["evidence"] = {k: old["evidence"][k] for k in ("event_hash", "prev_event_hash")}
    raw.produce(settings.topic_transitions,
                CONFLUENT_MAGIC + struct.pack(">I", inputs.v1_id) + encode_datum(inputs.v1.parsed, old_v1),
                key=b"v1")
    known_enum = inputs.record()
    raw.produce(settings.topic_transitions, inputs.future.encode(known_enum), key=b"future-known-symbol")
    # The same event_id twice, with different content: tampering. Both scored; the second flagged.
    # A careful tamperer recomputes the hash (AG-EVD-005); a careless one keeps it (AG-EVD-002).
    first = inputs.record(run_id="run-dup-1")
    rehashed = dict(first, resource={**first["resource"], "resource_id": "grp-finance"})
    rehashed["evidence"] = {**first["evidence"], "event_hash": event_hash(rehashed)}
    same_hash = dict(first, resource={**first["resource"], "resource_id": "grp-payroll"})
    for rec in (first, rehashed, same_hash):
        pub.send(rec)
        pub.flush()

    scored = [odd, confluent, old, known_enum, first]
    dead = read_topic(settings, settings.topic_dlq, len(BAD))
    reasons = {m.key().decode(): dict(m.headers())["agentgov.error.reason"].decode() for m in dead}
    assert reasons == BAD
    for m in dead:
        headers = dict(m.headers())
        assert headers["agentgov.error.message"] and headers["agentgov.source.topic"].decode() == \
            settings.topic_transitions
    assert wait_until(lambda: pipe.writer.stored >= len(scored) + 2, 60)
    rows = {r["event_id"]: r for r in pipe.sink.query(
        "SELECT event_id, from_state, step FROM {db}.transitions FINAL")}
    assert {str(r["event_id"]) for r in scored} <= set(rows)
    assert rows[str(odd["event_id"])]["from_state"] == "line1\nline2\t\x07bell"
    # The first copy is what the store shows; the later copies are kept apart (migration 004) with the
    # scorer's flags on them, and AG-EVD-005 from the store in any case.
    codes = {c for r in pipe.sink.query(
        "SELECT finding_codes FROM {db}.duplicates WHERE event_id = {e:String}", {"e": first["event_id"]})
        for c in r["finding_codes"]}
    assert {"AG-EVD-005", "AG-EVD-002"} <= codes, codes
    assert rows[str(first["event_id"])]["step"] == first["step"]
    assert pipe.metrics.registry.get_sample_value("agentgov_dead_letters_total", {"reason": "unknown_enum"}) == 1


def test_accounting_produced_equals_stored_plus_dead_lettered(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings, Any], InProcess],
) -> None:
    settings = settings_factory(max_message_bytes=8192)
    reg = registry()
    pipe = in_process(settings, reg)
    pub = publisher_factory(settings)
    inputs = Inputs(pub, reg)
    rng = random.Random(5)
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all"}))
    produced = Counter[str]()
    for i in range(2000):
        if rng.random() < 0.10:
            kind = rng.choice(sorted(BAD))
            producer.produce(settings.topic_transitions, inputs.bad(kind), key=f"bad-{i}".encode())
            produced["bad"] += 1
        else:
            producer.produce(settings.topic_transitions, inputs.valid(), key=f"ok-{i}".encode())
            produced["good"] += 1
        producer.poll(0)
    assert producer.flush(60) == 0
    total = produced["good"] + produced["bad"]

    assert wait_until(lambda: pipe.writer.stored >= produced["good"], 120)
    dead = read_topic(settings, settings.topic_dlq, produced["bad"])
    dead_sources = {(dict(m.headers())["agentgov.source.partition"], dict(m.headers())["agentgov.source.offset"])
                    for m in dead}
    stored = pipe.sink.count("transitions")
    print(f"\nACCOUNTING produced={total} good={produced['good']} bad={produced['bad']} stored={stored} "
          f"dlq={len(dead_sources)} dlq_messages={len(dead)}")
    assert stored + len(dead_sources) == total
    assert (stored, len(dead_sources)) == (produced["good"], produced["bad"])
