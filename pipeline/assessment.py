"""Encoding of the scored output, ``RiskAssessment``, whose last field is the transition itself.

Avro encodes a record as the concatenation of its fields, so when the event arrived in the current
transition schema the assessment is the encoded head fields followed by the event's own datum bytes:
the transition is never re-encoded on the hot path. Events in an older schema version take the slow
path (full re-encode of the resolved record).
"""

from __future__ import annotations

import copy
import io
from typing import Any

from fastavro import parse_schema, schemaless_writer

from .schemas import SchemaSet, _strip_logical
from .scoring.engine import Scored
from .scoring.policy import LoadedPolicy
from .serde import Decoded, Serde


class AssessmentEncoder:
    """Builds framed ``RiskAssessment`` messages.

    Example::

        enc = AssessmentEncoder(schemas, Serde(schemas, record="risk_assessment"), "0.1.0", policy)
        value = enc.encode(decoded, scored, partition=0, offset=42, scored_at_ms=now)
    """

    def __init__(self, schemas: SchemaSet, serde: Serde, scorer_version: str, policy: LoadedPolicy) -> None:
        full = schemas.assessment.raw
        if full["fields"][-1]["name"] != "transition":
            raise ValueError("the assessment schema must end with the 'transition' field")
        head = copy.deepcopy(full)
        head["fields"] = head["fields"][:-1]
        head["name"] = head["name"] + "Head"
        self._head = parse_schema(_strip_logical(head))
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
        record = self.head(decoded.record, scored, partition, offset, scored_at_ms)
        buf = io.BytesIO()
        buf.write(self._header)
        if decoded.current:
            schemaless_writer(buf, self._head, record)
            buf.write(decoded.datum)
        else:
            record["transition"] = decoded.record
            schemaless_writer(buf, self._full, record)
        return buf.getvalue()
