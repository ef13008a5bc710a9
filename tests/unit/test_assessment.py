"""The assessment fast path (head + the event's own datum) is byte-identical to a full encode."""

from __future__ import annotations

import io

import pytest
from fastavro import reader, schemaless_writer

from pipeline.assessment import AssessmentEncoder, digest_of_assessment, head_schema, transition_digest
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import ASSESSMENT, TRANSITION, SchemaSet
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.policy import load_policy
from pipeline.serde import SOE_HEADER, Decoded, Serde
from pipeline.settings import Settings
from pipeline.sinks.ocf import ContainerBuilder


class _NullProducer:
    def produce(self, *a: object, **k: object) -> None: ...
    def poll(self, *a: object) -> int: return 0
    def flush(self, *a: object) -> int: return 0


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return SchemaSet.load()


@pytest.fixture
def pub(schemas: SchemaSet) -> TransitionPublisher:
    return TransitionPublisher(Settings(), serde=Serde(schemas), producer=_NullProducer())  # type: ignore[arg-type]


CASES = [
    draft(),
    draft(action="assign_role", **{"resource.privilege_tier": 3, "decision.authority": "model"}),
    draft(inputs_used=[], attributes={"k": "v", "ünïcode": "✓"}, **{"trigger.ref": None}),
]


@pytest.mark.parametrize("doc", CASES)
def test_fast_path_equals_full_encode(schemas: SchemaSet, pub: TransitionPublisher, doc: dict) -> None:
    serde = Serde(schemas)
    decoded = serde.decode(serde.encode(pub.complete(doc)))
    assert decoded.current
    policy = load_policy()
    scored = score(decoded.record, ScoringContext(policy=policy))
    enc = AssessmentEncoder(schemas, Serde(schemas, record=ASSESSMENT), "t", policy)
    fast = enc.encode(decoded, scored, 3, 42, 1_700_000_000_000)
    slow = enc.encode(Decoded(decoded.record, b"", False, 2), scored, 3, 42, 1_700_000_000_000)
    assert fast == slow
    back = Serde(schemas, record=ASSESSMENT).decode(fast).record
    assert back["transition"] == decoded.record
    assert back["risk_score"] == scored.risk_score
    assert [f["code"] for f in back["findings"]] == [f.code for f in scored.findings]


def test_old_version_event_is_resolved_and_reencoded(schemas: SchemaSet, pub: TransitionPublisher) -> None:
    v1 = schemas.versions[TRANSITION][1]
    record = pub.complete(draft())
    old = {k: v for k, v in record.items() if k != "tenant"}
    old["evidence"] = {k: v for k, v in record["evidence"].items() if k in ("event_hash", "prev_event_hash")}
    buf = io.BytesIO()
    schemaless_writer(buf, v1.parsed, old)
    data = b"\xc3\x01" + v1.fingerprint + buf.getvalue()
    decoded = Serde(schemas).decode(data)
    assert not decoded.current and decoded.writer_version == 1
    assert decoded.record["tenant"] is None and decoded.record["evidence"]["signature"] is None
    policy = load_policy()
    enc = AssessmentEncoder(schemas, Serde(schemas, record=ASSESSMENT), "t", policy)
    out = enc.encode(decoded, score(decoded.record, ScoringContext(policy=policy)), 0, 0, 0)
    assert Serde(schemas, record=ASSESSMENT).decode(out).record["transition"] == decoded.record


def test_container_of_raw_datums_reads_back(schemas: SchemaSet, pub: TransitionPublisher) -> None:
    serde = Serde(schemas)
    frames = [serde.encode(pub.complete(draft(run_id=f"r{i}"))) for i in range(5)]
    container = ContainerBuilder(schemas.transition.raw).build([f[SOE_HEADER:] for f in frames])
    records = list(reader(io.BytesIO(container)))
    assert [r["run_id"] for r in records] == [f"r{i}" for i in range(5)]
    assert ContainerBuilder(schemas.transition.raw).build([]).startswith(b"Obj\x01")


def test_the_scorers_digest_is_the_one_the_writer_reads_past_the_head(schemas: SchemaSet,
                                                                       pub: TransitionPublisher) -> None:
    """The scorer sends the digest of the transition an assessment carries; for a message without it (an older
    scorer) the writer reads past the head to compute it. Both must agree, on the fast and the slow path and
    for an event in an older schema version, or a redelivery would be taken for a rewrite (migration 008)."""
    serde, policy = Serde(schemas), load_policy()
    enc = AssessmentEncoder(schemas, Serde(schemas, record=ASSESSMENT), "t", policy)
    head = head_schema(schemas.assessment.raw)
    record = pub.complete(draft(action="assign_role", **{"resource.privilege_tier": 3}))
    decoded = serde.decode(serde.encode(record))
    scored = score(decoded.record, ScoringContext(policy=policy))
    value, digest = enc.encode_digested(decoded, scored, 3, 42, 1_700_000_000_000)
    assert digest == transition_digest(decoded.datum) == digest_of_assessment(value[SOE_HEADER:], head)
    slow, slow_digest = enc.encode_digested(Decoded(decoded.record, b"", False, 2), scored, 3, 42, 1)
    assert slow_digest == digest == digest_of_assessment(slow[SOE_HEADER:], head)
    rescored = enc.encode_digested(decoded, score(decoded.record, ScoringContext(policy=policy)), 3, 42, 2)
    assert rescored[1] == digest and rescored[0] != value  # another scored_at, the same event
    other = serde.decode(serde.encode(dict(record, run_id="another")))
    assert enc.encode_digested(other, scored, 3, 42, 1)[1] != digest
    v1 = schemas.versions[TRANSITION][1]
    old = {k: v for k, v in record.items() if k != "tenant"}
    old["evidence"] = {k: v for k, v in record["evidence"].items() if k in ("event_hash", "prev_event_hash")}
    buf = io.BytesIO()
    schemaless_writer(buf, v1.parsed, old)
    resolved = serde.decode(b"\xc3\x01" + v1.fingerprint + buf.getvalue())
    out, old_digest = enc.encode_digested(resolved, scored, 0, 0, 0)
    assert old_digest == digest_of_assessment(out[SOE_HEADER:], head)
