"""Encoding of the scored output, ``RiskAssessment``, whose last field is the transition itself.

Avro encodes a record as the concatenation of its fields, so when the event arrived in the current
transition schema the assessment is the encoded head fields followed by the event's own datum bytes:
the transition is never re-encoded on the hot path. Events in an older schema version take the slow
path (full re-encode of the resolved record).

The scorer also sends the digest of those transition bytes (header ``agentgov.source.digest``). The writer
stores it with the event (``event_ids.source_digest``, migration 008) and takes a later copy from the same
source record for a redelivery only when the digest matches too: after the embedded Tansu broker restarts,
offsets start at 0 again, and another event can arrive from the (partition, offset) the original came from.
A re-scored copy (another ``scored_at``, other findings) of the same event has the same digest.
"""

from __future__ import annotations

import copy
import hashlib
import io
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from .schemas import SchemaSet, _strip_logical
from .scoring.engine import Scored
from .scoring.policy import LoadedPolicy
from .serde import Decoded, Serde

DIGEST_HEADER = "agentgov.source.digest"


def transition_digest(datum: bytes | memoryview) -> str:
    """The digest of a transition's Avro datum as an assessment carries it (blake2b, 128 bits, hex)."""
    return hashlib.blake2b(datum, digest_size=16).hexdigest()


def assessment_headers(ev: dict[str, Any], partition: int, offset: int, digest: str) -> list[tuple[str, bytes]]:
    """An assessment message's headers: the event's time (the writer's end-to-end latency), the transitions
    record it was scored from, and the digest of that record's content (together: the writer's redelivery
    check, migrations 004 and 008)."""
    return [("occurred_at", str(ev["occurred_at"]).encode()),
            ("agentgov.source.partition", str(partition).encode()),
            ("agentgov.source.offset", str(offset).encode()),
            (DIGEST_HEADER, digest.encode())]


def head_schema(assessment: dict[str, Any]) -> Any:
    """The parsed schema of an assessment's fields before ``transition`` (its last field)."""
    if assessment["fields"][-1]["name"] != "transition":
        raise ValueError("the assessment schema must end with the 'transition' field")
    head = copy.deepcopy(assessment)
    head["fields"] = head["fields"][:-1]
    head["name"] = head["name"] + "Head"
    return parse_schema(_strip_logical(head))


def digest_of_assessment(datum: bytes, head: Any) -> str:
    """:func:`transition_digest` of an assessment datum's transition, found by reading past the head (``head``
    from :func:`head_schema` of the datum's writer schema). About 15 µs: the writer's way for a message
    without the scorer's header (an older scorer), not its hot path."""
    buf = io.BytesIO(datum)
    schemaless_reader(buf, head, None)
    return transition_digest(memoryview(datum)[buf.tell():])


class AssessmentEncoder:
    """Builds framed ``RiskAssessment`` messages.

    Example::

        enc = AssessmentEncoder(schemas, Serde(schemas, record="risk_assessment"), "0.1.0", policy)
        value = enc.encode(decoded, scored, partition=0, offset=42, scored_at_ms=now)
    """

    def __init__(self, schemas: SchemaSet, serde: Serde, scorer_version: str, policy: LoadedPolicy) -> None:
        self._head = head_schema(schemas.assessment.raw)
        self._full = schemas.assessment.parsed
        self._header = serde.header()
        self.scorer_version = scorer_version
        self.set_policy(policy)

    def set_policy(self, policy: LoadedPolicy) -> None:
        self.policy_version = policy.version
        self.policy_hash = policy.sha256

    def head(self, ev: dict[str, Any], scored: Scored, partition: int, offset: int, scored_at_ms: int
             ) -> dict[str, Any]:
        return {
            "event_id": ev["event_id"],
            "run_id": ev["run_id"],
            "agent_id": ev["agent"]["agent_id"],
            "action": ev["action"],
            "risk_score": scored.risk_score,
            "risk_level": scored.risk_level,
            "findings": [f.to_avro() for f in scored.findings],
            "scored_at": scored_at_ms,
            "scorer_version": self.scorer_version,
            "governance_policy_version": self.policy_version,
            "governance_policy_hash": self.policy_hash,
            "source_partition": partition,
            "source_offset": offset,
        }

    def encode(self, decoded: Decoded, scored: Scored, partition: int, offset: int, scored_at_ms: int) -> bytes:
        return self.encode_digested(decoded, scored, partition, offset, scored_at_ms)[0]

    def encode_digested(self, decoded: Decoded, scored: Scored, partition: int, offset: int, scored_at_ms: int
                        ) -> tuple[bytes, str]:
        """The framed assessment and the :func:`transition_digest` of the transition it carries."""
        record = self.head(decoded.record, scored, partition, offset, scored_at_ms)
        buf = io.BytesIO()
        buf.write(self._header)
        schemaless_writer(buf, self._head, record)
        start = buf.tell()
        if decoded.current:
            buf.write(decoded.datum)
            return buf.getvalue(), transition_digest(decoded.datum)
        # Re-encoded in the current schema: the same head bytes (up to ``start``), then the transition.
        record["transition"] = decoded.record
        full = io.BytesIO()
        full.write(self._header)
        schemaless_writer(full, self._full, record)
        value = full.getvalue()
        return value, transition_digest(memoryview(value)[start:])
