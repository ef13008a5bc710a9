"""Every limit on what a client may send, defined once and enforced by the SDK, ``agentgov publish``,
``events.check_values`` (scorer) and the store writer alike. docs/guarantees.md lists each limit and
what happens beyond it.

Sizes: one Kafka record may hold ``max_message_bytes`` (librdkafka's ``message.max.bytes``, the
producer's own cap; brokers default to a little more). An event may use that minus a head room, so its
assessment (the event plus findings) and its dead letter (the event plus error headers) still fit.

Example::

    limits = Limits.from_settings(settings)
    limits.check_size(len(payload))          # raises ValidationError(reason="oversized")
    check_record(record, limits, now_ms)      # every bound below, naming the field
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ValidationError

if TYPE_CHECKING:
    from .settings import Settings

INT32_MAX = 2**31 - 1
"""Avro ``int`` and the store's ``Int32`` columns: ``step`` may not exceed it."""
STEP_MAX = INT32_MAX
TIER_MAX = 3
"""``resource.privilege_tier`` is 0..3 (stored as ``UInt8``)."""
IDENT_MAX_CHARS = 512
"""Every string field of an event (ids, states, names, refs, evidence)."""
INPUTS_MAX = 256
"""``inputs_used`` entries."""
ATTRIBUTES_MAX = 256
"""``attributes`` entries."""
SCORER_CODES_MAX = 64
"""An access fact's ``scorer_codes`` (distinct finding codes: the catalogue holds fewer)."""
COLLECTION_MAX: dict[tuple[str, str], int] = {
    ("agentgov.events.AgentTransition", "inputs_used"): INPUTS_MAX,
    ("agentgov.events.AgentTransition", "attributes"): ATTRIBUTES_MAX,
    ("agentgov.facts.AccessFact", "scorer_codes"): SCORER_CODES_MAX,
}
"""(record full name, field) -> entries: enforced while decoding (``avro_guard``, refused at the block count that
crosses it, before any entry is built) and again by :func:`check_record` on a record built in code."""
FACT_MAX_BYTES = 40_960
"""An access fact record, framing included. The scorer writes one only for an event it accepted, so each of its
17 strings is at most ``IDENT_MAX_CHARS`` characters (2,048 UTF-8 bytes and a 2-byte length), its
``scorer_codes`` at most ``SCORER_CODES_MAX`` catalogue codes (64 bytes each is ample), its 5 numbers 10 bytes
each: about 39 KB at the very most. A larger record on a fact, holdings or delegations topic was forged (anyone
on loopback can write to the embedded broker), and its strings would be copied into findings and log lines: a
300 KB ``run_id`` made a finding the producer refused, and the correlator aborted and replayed that batch for
good (audit, session 26). Refused as ``oversized``, before it is decoded."""
ATTRIBUTE_KEY_MAX_CHARS = 256
ATTRIBUTE_VALUE_MAX_CHARS = 8192
DAY_MS = 86_400_000

HEAD_ROOM_MAX_BYTES = 65_536
"""Bytes of a record kept free for the assessment's findings, dead-letter headers and the key."""
KEY_MAX_BYTES = 512
"""A dead letter carries at most this much of the original key."""
ERROR_MESSAGE_MAX_CHARS = 500
"""A dead letter's ``agentgov.error.message`` header."""
STORE_TIME_MIN_MS = -2_208_988_800_000
"""1900-01-01T00:00:00Z, the first instant a ``DateTime64(3)`` column holds."""
STORE_TIME_MAX_MS = 10_413_791_999_999
"""2299-12-31T23:59:59.999Z, the last instant a ``DateTime64(3)`` column holds (Python's ``datetime`` stops at
year 9999: a time past it raised ``ValueError`` while the writer built a row, outside its per-record handling)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one process (sizes and clock bounds come from settings)."""

    message_bytes: int = 1_000_000
    max_future_ms: int = 300_000
    max_age_ms: int = 400 * DAY_MS

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(message_bytes=settings.max_message_bytes,
                   max_future_ms=settings.max_future_skew_seconds * 1000,
                   max_age_ms=settings.event_age_days * DAY_MS)

    @property
    def head_room_bytes(self) -> int:
        return min(HEAD_ROOM_MAX_BYTES, max(1024, self.message_bytes // 8))

    @property
    def event_bytes(self) -> int:
        """Largest encoded event (wire header included) accepted anywhere."""
        return self.message_bytes - self.head_room_bytes

    @property
    def dlq_payload_bytes(self) -> int:
        """A dead letter carries at most this much of the original payload (the rest is cut, and the
        ``agentgov.payload.*`` headers give the original size and SHA-256)."""
        return self.event_bytes

    def check_size(self, size: int) -> None:
        if size > self.event_bytes:
            raise ValidationError(f"event of {size} bytes exceeds the {self.event_bytes}-byte limit",
                                  reason="oversized", field="")


def check_store_time(ms: Any, field: str) -> int:
    """``ms`` (epoch millis) if the store can hold it as a time; else :class:`ValidationError` (reason
    ``invalid_value``) naming the field, so the record is dead-lettered instead of failing its batch."""
    if type(ms) is not int or not STORE_TIME_MIN_MS <= ms <= STORE_TIME_MAX_MS:
        raise ValidationError(f"{field}={ms!r} is not a time the store can hold (1900-01-01 to 2299-12-31 UTC)",
                              reason="invalid_value", field=field)
    return ms


def _text(value: Any, field: str, limit: int = IDENT_MAX_CHARS) -> None:
    if len(value) > limit:
        raise ValidationError(f"{field} is {len(value)} characters, over the {limit} limit",
                              reason="invalid_value", field=field)


# (path, optional): every string field of a transition except the map, checked by length.
_STRINGS: tuple[tuple[str, ...], ...] = (
    ("event_id",), ("workflow_id",), ("workflow_version",), ("run_id",), ("from_state",), ("to_state",),
    ("agent", "agent_id"), ("agent", "agent_version"), ("agent", "on_behalf_of"), ("agent", "model_id"),
    ("trigger", "ref"), ("target", "identity_id"), ("resource", "system"), ("resource", "resource_id"),
    ("resource", "entitlement"), ("decision", "approved_by"), ("decision", "approval_ref"),
    ("policy", "policy_id"), ("policy", "policy_version"), ("policy", "decision_id"),
    ("evidence", "event_hash"), ("evidence", "prev_event_hash"), ("evidence", "signature"),
    ("evidence", "key_id"), ("tenant",),
)


def _from_future(occurred: int, limits: Limits) -> ValidationError:
    return ValidationError(f"occurred_at={occurred} is more than {limits.max_future_ms // 1000}s in the future",
                           reason="invalid_value", field="occurred_at")


def check_fact_time(occurred: int, limits: Limits, now_ms: int) -> None:
    """The ``occurred_at`` of an access fact or a delegation edge: at most ``max_future_ms`` ahead of ``now_ms``
    (the scorer's bound; a forged fact stamped at int64 max was held as state) and a time the store can hold.
    Raises :class:`ValidationError` (reason ``invalid_value``, field ``occurred_at``).

    No age bound on the wall clock: the scorer applied ``max_age_ms`` when it accepted the event, holdings and
    edges count whatever their age (compacted topics; SoD against a grant made last year), and a fact read
    late, or replayed after a restart, must be judged as when it was read at once. The future bound only
    loosens as the clock moves, so a fact taken once is taken on every replay."""
    if occurred > now_ms + limits.max_future_ms:
        raise _from_future(occurred, limits)
    check_store_time(occurred, "occurred_at")


def check_record(record: dict[str, Any], limits: Limits, now_ms: int) -> None:
    """Integer ranges, string lengths, collection sizes and the ``occurred_at`` window.

    Raises :class:`ValidationError` (reason ``invalid_value``) naming the field."""
    step = record["step"]
    if not 0 <= step <= STEP_MAX:
        raise ValidationError(f"step={step} outside 0..{STEP_MAX}", reason="invalid_value", field="step")
    tier = record["resource"]["privilege_tier"]
    if not 0 <= tier <= TIER_MAX:
        raise ValidationError(f"resource.privilege_tier={tier} outside 0..{TIER_MAX}", reason="invalid_value",
                              field="resource.privilege_tier")
    occurred = record["occurred_at"]
    if occurred > now_ms + limits.max_future_ms:
        raise _from_future(occurred, limits)
    if occurred < now_ms - limits.max_age_ms:
        raise ValidationError(
            f"occurred_at={occurred} is more than {limits.max_age_ms // DAY_MS} days old (max event age)",
            reason="invalid_value", field="occurred_at")
    for path in _STRINGS:
        node: Any = record
        for part in path:
            node = node.get(part) if node is not None else None
        if node is not None:
            _text(node, ".".join(path))
    inputs = record["inputs_used"]
    if len(inputs) > INPUTS_MAX:
        raise ValidationError(f"inputs_used has {len(inputs)} entries, over {INPUTS_MAX}",
                              reason="invalid_value", field="inputs_used")
    for item in inputs:
        _text(item["name"], "inputs_used.name")
        _text(item["source"], "inputs_used.source")
    attributes = record["attributes"]
    if len(attributes) > ATTRIBUTES_MAX:
        raise ValidationError(f"attributes has {len(attributes)} entries, over {ATTRIBUTES_MAX}",
                              reason="invalid_value", field="attributes")
    for key, value in attributes.items():
        _text(key, "attributes.<key>", ATTRIBUTE_KEY_MAX_CHARS)
        _text(value, "attributes.<value>", ATTRIBUTE_VALUE_MAX_CHARS)
