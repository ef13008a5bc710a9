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
    (("inputs_used",), [{"name": "dept\n    allowed_systems: null", "source": "hr"}], "inputs_used.name"),
    (("inputs_used",), [{"name": "ok", "source": "hr"}, {"name": "x\x1b]0;t\x07", "source": "hr"}],
     "inputs_used.name"),
    (("inputs_used",), [{"name": "", "source": "hr"}], "inputs_used.name"),
    # blank: only whitespace or invisible characters names nothing (an approver of " " approved nothing)
    (("decision", "approved_by"), " ", "decision.approved_by"),
    (("decision", "approved_by"), "\u00a0\u2003", "decision.approved_by"),
    (("decision", "approved_by"), "\u200b", "decision.approved_by"),
    (("decision", "approved_by"), "\ufeff\u2060\u3164", "decision.approved_by"),
    (("agent", "on_behalf_of"), " ", "agent.on_behalf_of"),
    (("target", "identity_id"), "\u200d", "target.identity_id"),
    (("inputs_used",), [{"name": "  ", "source": "hr"}], "inputs_used.name"),
    # an invisible character anywhere in an id, or a space at an end: another spelling of the same id
    (("run_id",), "run-1\u200d", "run_id"),
    (("workflow_id",), "\ufeffjml-provisioning", "workflow_id"),
    (("agent", "agent_id"), "agent-b\u200b", "agent.agent_id"),
    (("agent", "on_behalf_of"), "svc\u00a0iga", "agent.on_behalf_of"),
    (("target", "identity_id"), "u-\u2060step", "target.identity_id"),
    (("target", "identity_id"), "u-step ", "target.identity_id"),
    (("resource", "system"), "aws\u200e", "resource.system"),
    (("resource", "resource_id"), "role/Admin\u202e", "resource.resource_id"),
    (("resource", "entitlement"), "aws\u200b-admin", "resource.entitlement"),
    (("resource", "entitlement"), " aws-admin", "resource.entitlement"),
    (("decision", "approved_by"), " mgr-1 ", "decision.approved_by"),
    (("decision", "approved_by"), "ciso\U000e0041", "decision.approved_by"),
    (("inputs_used",), [{"name": "department\u200c", "source": "hr"}], "inputs_used.name"),
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


def test_check_values_accepts_names_with_inner_spaces_and_non_latin_letters() -> None:
    for who in ("Jane Doe", "José Müller", "王伟"):
        rec = record(**{"decision.approved_by": who, "resource.resource_id": "Domain Admins"})
        check_values(rec, now_ms=rec["occurred_at"], max_future_ms=0)


@pytest.mark.parametrize(("value", "hidden", "named"), [
    ("u-step\u200b", "\u200b", "U+200B ZERO WIDTH SPACE at its end"),
    ("u\u202estep", "\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE at character 2 of 6"),
    ("u-st\u3164ep", "\u3164", "U+3164 HANGUL FILLER at character 5 of 7"),
    ("u-step\x1b[2J", "\x1b", "U+001B (a control character) at character 7 of 10"),
])
def test_an_id_refused_for_a_hidden_character_names_the_field_and_the_code_point_never_the_character(
        value: str, hidden: str, named: str) -> None:
    """``u-step\u200b`` is another identity than ``u-step`` to every key and rule: refused at ingest. The
    message says which character by its code point; the character itself (invisible, or one a terminal
    obeys) is never in it."""
    rec = record(**{"target.identity_id": value})
    with pytest.raises(ValidationError) as caught:
        check_values(rec, now_ms=rec["occurred_at"], max_future_ms=0)
    text = str(caught.value)
    assert caught.value.fields["field"] == "target.identity_id" and text.startswith("target.identity_id holds")
    assert named in text and hidden not in text
