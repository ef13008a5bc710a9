"""Fuzzing Serde.decode: whatever the bytes, the answer is a record or a DecodeError with a closed reason."""

from __future__ import annotations

import json
import struct
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.deadletters import dead_letter, header
from pipeline.errors import DLQ_REASONS, DecodeError, ValidationError
from pipeline.events import check_values
from pipeline.limits import Limits
from pipeline.schemas import TRANSITION, SchemaSet
from pipeline.serde import CONFLUENT_MAGIC, SOE_HEADER, Serde
from tests.unit.scoring_factory import record

SCHEMAS = SchemaSet.load()
SERDE = Serde(SCHEMAS, max_bytes=64 * 1024)
VALID = SERDE.encode(record())
NOW_MS = 1_777_629_600_000  # 2026-05-01T10:00Z, when record() events occur: inside the max-age window
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def answer(data: bytes, serde: Serde = SERDE) -> str:
    """'ok' or the DLQ reason; anything else escaping is the bug under test."""
    try:
        decoded = serde.decode(data)
    except DecodeError as exc:
        assert exc.reason in DLQ_REASONS, exc.reason
        assert exc.message
        return exc.reason
    try:
        check_values(decoded.record, now_ms=NOW_MS, max_future_ms=300_000)
    except ValidationError as exc:
        assert exc.reason in DLQ_REASONS
        return exc.reason
    return "ok"


@FAST
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    answer(data)


@FAST
@given(st.binary(max_size=600))
def test_random_datum_behind_a_known_fingerprint(datum: bytes) -> None:
    answer(VALID[:SOE_HEADER] + datum)


@FAST
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_every_truncation_of_a_valid_event(cut: int) -> None:
    reason = answer(VALID[:cut])
    assert reason != "ok"


@FAST
@given(st.lists(st.tuples(st.integers(min_value=SOE_HEADER, max_value=len(VALID) - 1),
                          st.integers(min_value=0, max_value=255)), min_size=1, max_size=8))
def test_corrupted_bytes_of_a_valid_event(flips: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    answer(bytes(data))


@FAST
@given(st.binary(min_size=0, max_size=64), st.integers(min_value=0, max_value=2**32 - 1))
def test_confluent_framing_with_any_id(datum: bytes, schema_id: int) -> None:
    reg = SchemaRegistryClient.new_client({"url": "mock://fuzz"})
    reason = answer(CONFLUENT_MAGIC + struct.pack(">I", schema_id) + datum, Serde(SCHEMAS, reg))
    assert reason in DLQ_REASONS or reason == "ok"


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "bad_magic"),
    (b"\x17not avro", "bad_magic"),
    (b"\xc3\x02" + VALID[2:], "bad_magic"),
    (b"\xc3\x01\x00", "truncated"),
    (b"\xc3\x01" + b"\xee" * 8 + VALID[SOE_HEADER:], "unknown_schema"),
    (VALID[:-5], "truncated"),
    (VALID + b"\x00", "malformed"),
    (b"\x00\x00\x00", "truncated"),
    (b"\x00\x00\x00\x00\x07" + VALID[SOE_HEADER:], "unknown_schema"),  # registry id, no registry
    (VALID + b"x" * (64 * 1024), "oversized"),
], ids=["empty", "not-avro", "other-magic-version", "header-only", "unknown-fingerprint", "cut-short",
        "trailing-byte", "registry-header-only", "registry-id-no-registry", "oversized"])
def test_named_bad_inputs(data: bytes, reason: str) -> None:
    assert answer(data) == reason


def _with_string(value: bytes, placeholder: str = "S" * 12, **changes: Any) -> bytes:
    rec = record(**{"from_state": placeholder}, **changes)
    data = SERDE.encode(rec)
    assert len(value) == len(placeholder)
    return data.replace(placeholder.encode(), value)


def test_invalid_utf8_in_a_string() -> None:
    assert answer(_with_string(b"\xff\xfe" + b"S" * 10)) == "invalid_utf8"


def test_control_characters_in_an_identifier_are_rejected_elsewhere_kept() -> None:
    assert answer(SERDE.encode(record(run_id="run-\x00-1"))) == "invalid_value"
    assert answer(SERDE.encode(record(**{"agent.agent_id": "agent\x1b[31m"}))) == "invalid_value"
    # Free text outside the identifiers is stored verbatim (it is data, never SQL or a label).
    assert answer(_with_string(b"a\x07b\nc\td\x00efgh")) == "ok"


@pytest.mark.parametrize(("field", "value", "named"), [
    ("target.identity_id", "u-step\u200b", "U+200B ZERO WIDTH SPACE"),
    ("agent.agent_id", "agent\u202eb", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    ("resource.system", "aws\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    ("run_id", "run-1 ", "U+0020 SPACE at its end"),
])
def test_an_invisible_character_in_an_identifier_is_a_dead_letter_naming_the_field(field: str, value: str,
                                                                                   named: str) -> None:
    """What the scorer does with such an event (decode, check_values, dead letter with reason invalid_value):
    the headers name the field and the character by its code point, never the character itself."""
    data = SERDE.encode(record(**{field: value}))
    assert answer(data) == "invalid_value"
    with pytest.raises(ValidationError) as caught:
        check_values(SERDE.decode(data).record, now_ms=NOW_MS, max_future_ms=300_000)
    msg = type("Msg", (), {"value": lambda self: data, "key": lambda self: b"k", "topic": lambda self: "t",
                           "partition": lambda self: 0, "offset": lambda self: 7})()
    _, _, headers = dead_letter(msg, caught.value, caught.value.reason, Limits())
    assert header(headers, "agentgov.error.reason") == "invalid_value"
    assert header(headers, "agentgov.error.field") == field
    message = header(headers, "agentgov.error.message") or ""
    hidden = chr(int(named[2:6], 16))
    assert named in message and (hidden == " " or hidden not in message)


@pytest.mark.parametrize(("change", "field"), [
    ({"resource.privilege_tier": 9}, "resource.privilege_tier"),
    ({"resource.privilege_tier": -1}, "resource.privilege_tier"),
    ({"step": -3}, "step"),
])
def test_values_the_schema_cannot_forbid(change: dict[str, Any], field: str) -> None:
    rec = record()
    node = rec
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = next(iter(change.values()))
    with pytest.raises(ValidationError) as caught:
        check_values(SERDE.decode(SERDE.encode(rec)).record, now_ms=rec["occurred_at"], max_future_ms=0)
    assert caught.value.reason == "invalid_value" and caught.value.fields["field"] == field


def test_far_future_timestamp() -> None:
    rec = record()
    with pytest.raises(ValidationError) as caught:
        check_values(rec, now_ms=rec["occurred_at"] - 3_600_000, max_future_ms=300_000)
    assert caught.value.fields["field"] == "occurred_at"
    check_values(rec, now_ms=rec["occurred_at"] - 200_000, max_future_ms=300_000)  # within the skew


def test_enum_symbol_from_the_future() -> None:
    """An agent on a newer contract sends an action this scorer does not know: unknown_enum, not a crash."""
    raw = json.loads(SCHEMAS.transition.json())
    for f in raw["fields"]:
        if f["name"] == "action":
            f["type"]["symbols"] = [*f["type"]["symbols"], "rotate_secret"]
    reg = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})
    future_id = reg.register_schema("future-value", Schema(json.dumps(raw), "AVRO"))
    future = Serde(SCHEMAS, reg)
    future.current = type(SCHEMAS.transition)(TRANSITION, 99, raw, _parsed(raw), b"", "")
    future._registry_id = future_id
    consumer = Serde(SCHEMAS, reg)
    assert answer(future.encode(dict(record(), action="rotate_secret")), consumer) == "unknown_enum"
    assert answer(future.encode(record()), consumer) == "ok"  # known symbols still read


def _parsed(raw: dict[str, Any]) -> Any:
    from fastavro import parse_schema

    from pipeline.schemas import _strip_logical

    return parse_schema(_strip_logical(raw))
