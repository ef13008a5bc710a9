"""Events: the canonical hash is stable and excludes its own evidence; check_values names the field."""

from __future__ import annotations

import copy

import pytest

from pipeline.errors import ValidationError
from pipeline.events import canonical_bytes, check_values, event_hash, sign
from tests.unit.scoring_factory import record


def test_hash_ignores_nulls_key_order_and_its_own_evidence() -> None:
    rec = record()
    h = event_hash(rec)
    reordered = dict(reversed(list(rec.items())))
    assert event_hash(reordered) == h
    v1_shaped = {k: v for k, v in rec.items() if k != "tenant"}  # an older schema has no tenant at all
    v1_shaped["evidence"] = {"event_hash": "f" * 64, "prev_event_hash": None}
    assert event_hash(v1_shaped) == h
    signed = copy.deepcopy(rec)
    signed["evidence"].update(signature="ab" * 32, key_id="k1")
    assert event_hash(signed) == h
    assert sign(signed, b"k") == sign(rec, b"k") != sign(rec, b"other")


def test_hash_covers_content_and_the_chain() -> None:
    rec = record()
    h = event_hash(rec)
    assert event_hash(dict(rec, step=rec["step"] + 1)) != h
    assert event_hash(dict(rec, evidence={**rec["evidence"], "prev_event_hash": "1" * 64})) != h
    assert b'"event_hash"' not in canonical_bytes(rec)


@pytest.mark.parametrize(("path", "value", "field"), [
    (("resource", "privilege_tier"), 4, "resource.privilege_tier"),
    (("resource", "privilege_tier"), -1, "resource.privilege_tier"),
    (("step",), -1, "step"),
    (("event_id",), "not-a-uuid-but-36-characters-long!!!", "event_id"),
    (("event_id",), "x" * 5000, "event_id"),
    (("run_id",), "", "run_id"),
    (("run_id",), "run\x001", "run_id"),
    (("agent", "agent_id"), "agent\x7f", "agent.agent_id"),
    (("target", "identity_id"), "u1\n", "target.identity_id"),
    (("decision", "approved_by"), "mgr\x1b", "decision.approved_by"),
])
def test_check_values_rejects(path: tuple[str, ...], value: object, field: str) -> None:
    rec = record()
    node = rec
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(ValidationError) as caught:
        check_values(rec, now_ms=rec["occurred_at"], max_future_ms=0)
    assert caught.value.reason == "invalid_value" and caught.value.fields["field"] == field


def test_check_values_accepts_edges() -> None:
    for tier in range(4):
        rec = record(**{"resource.privilege_tier": tier, "decision.approved_by": "mgr"})
        check_values(rec, now_ms=rec["occurred_at"] - 300_000, max_future_ms=300_000)
    with pytest.raises(ValidationError):
        check_values(rec, now_ms=rec["occurred_at"] - 300_001, max_future_ms=300_000)
