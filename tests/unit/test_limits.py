"""One definition of the limits (pipeline/limits.py), the same at the SDK, the CLI and check_values; dead
letters always fit in a record."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.deadletters import dead_letter, header
from pipeline.errors import ValidationError
from pipeline.events import check_values
from pipeline.limits import DAY_MS, KEY_MAX_BYTES, STEP_MAX, Limits
from tests.unit.scoring_factory import record


def test_head_room_and_event_limit() -> None:
    assert Limits().event_bytes == 1_000_000 - 65_536
    small = Limits(message_bytes=8192)
    assert small.event_bytes == 8192 - 1024 and small.dlq_payload_bytes == small.event_bytes
    with pytest.raises(ValidationError) as caught:
        Limits().check_size(Limits().event_bytes + 1)
    assert caught.value.reason == "oversized"
    Limits().check_size(Limits().event_bytes)


@pytest.mark.parametrize(("change", "field"), [
    ({"step": STEP_MAX + 1}, "step"),
    ({"step": 2**64}, "step"),
    ({"workflow_version": "v" * 513}, "workflow_version"),
    ({"evidence.signature": "s" * 513}, "evidence.signature"),
    ({"attributes": {"k" * 257: "v"}}, "attributes.<key>"),
    ({"attributes": {"k": "v" * 8193}}, "attributes.<value>"),
    ({"inputs_used": [{"name": "n", "source": "s"}] * 257}, "inputs_used"),
    ({"event_id": "URN:UUID:0"}, "event_id"),
])
def test_bounds_name_the_field(change: dict[str, Any], field: str) -> None:
    rec = record()
    for key, value in change.items():
        node = rec
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ValidationError) as caught:
        check_values(rec, now_ms=rec["occurred_at"])
    assert caught.value.fields["field"] == field


def test_occurred_at_window_both_ways() -> None:
    rec = record()
    limits = Limits(max_age_ms=10 * DAY_MS)
    check_values(rec, now_ms=rec["occurred_at"] + 10 * DAY_MS, limits=limits)
    with pytest.raises(ValidationError, match="days old"):
        check_values(rec, now_ms=rec["occurred_at"] + 10 * DAY_MS + 1, limits=limits)
    with pytest.raises(ValidationError, match="in the future"):
        check_values(rec, now_ms=rec["occurred_at"] - 300_001, limits=limits)


def test_upper_case_uuid_is_not_canonical() -> None:
    rec = record()
    rec["event_id"] = rec["event_id"].upper()
    with pytest.raises(ValidationError, match="canonical"):
        check_values(rec, now_ms=rec["occurred_at"])


class _Msg:
    def __init__(self, value: bytes, key: bytes) -> None:
        self._value, self._key = value, key

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42


def test_a_dead_letter_is_cut_to_fit_and_says_so() -> None:
    limits = Limits()
    msg = _Msg(b"x" * 999_000, b"k" * 5000)
    value, key, headers = dead_letter(msg, ValueError("e" * 5000), "oversized", limits)
    assert len(value) == limits.dlq_payload_bytes and key is not None and len(key) == KEY_MAX_BYTES
    assert header(headers, "agentgov.payload.bytes") == "999000"
    assert header(headers, "agentgov.payload.truncated") == "1"
    assert len(header(headers, "agentgov.error.message") or "") == 500
    total = len(value) + len(key) + sum(len(k) + len(v) for k, v in headers)
    assert total < limits.message_bytes
    bare, _, headers = dead_letter(msg, ValueError("x"), "unproducible", limits, payload=False)
    assert bare == b"" and header(headers, "agentgov.payload.dropped") == "1"
    small, _, headers = dead_letter(_Msg(b"abc", b"k"), ValueError("x"), "invalid_value", limits)
    assert small == b"abc" and header(headers, "agentgov.payload.bytes") is None
