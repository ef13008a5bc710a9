"""Evidence rules: completeness, content hash, the run's hash chain, duplicates and signatures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.events import TransitionDict
from pipeline.scoring.engine import score
from tests.unit.scoring_factory import chain, codes, context_for, event

KEY = ("k1", b"secret-key-1")


def _evd(ev: TransitionDict, history: Sequence[TransitionDict] = (), **kw: Any) -> list[str]:
    return [c for c in codes(ev, context_for(ev, history, **kw)) if c.startswith("AG-EVD")]


@pytest.mark.parametrize(("changes", "fires"), [
    ({"trigger.ref": None}, True),
    ({"inputs_used": []}, True),
    ({"policy.policy_version": " "}, True),
    ({"policy.policy_version": "\u200b"}, True),
    ({"policy.policy_version": "\ufeff\u2060"}, True),
    ({"trigger.ref": "   "}, True),
    ({"trigger.ref": "\u00a0"}, True),
    ({"trigger.ref": "\u200b"}, True),
    ({}, False),
    ({"trigger.ref": " HR-1 "}, False),
    ({"action": "recommend", "decision.outcome": "recommended", "inputs_used": []}, False),  # not an access change
], ids=["no-ref", "no-inputs", "blank-version", "zero-width-version", "invisible-version",
        "blank-ref", "nbsp-ref", "zero-width-ref", "benign:complete",
        "benign:padded-ref", "benign:recommendation"])
def test_missing_evidence(changes: dict[str, Any], fires: bool) -> None:
    assert ("AG-EVD-001" in _evd(event(changes))) is fires


def test_tampered_content_is_caught() -> None:
    ev = event()
    ev["resource"]["privilege_tier"] = 3  # changed after hashing
    assert "AG-EVD-002" in _evd(ev)


def test_forged_hash_is_caught() -> None:
    assert "AG-EVD-002" in _evd(event({"evidence.event_hash": "ab" * 32}, rehash=False))


def test_hash_ignores_schema_v2_nulls() -> None:
    ev = event()
    del ev["tenant"]  # a v1 record has no tenant field; nulls are outside the hash
    assert _evd(ev) == []


CHAIN_CASES: list[tuple[str, list[int], int, str | None]] = [
    # (id, steps already seen, step arriving, code expected)
    ("in-order", [0, 1], 2, None),
    ("gap", [0], 2, "AG-EVD-003"),
    ("gap-of-several", [0, 1], 5, "AG-EVD-003"),
    ("late-step", [0, 2], 1, "AG-EVD-004"),
    ("repeated-step", [0, 1], 1, "AG-EVD-004"),
    ("first-step-no-history", [], 0, None),
]


@pytest.mark.parametrize(("seen", "arriving", "code"), [c[1:] for c in CHAIN_CASES], ids=[c[0] for c in CHAIN_CASES])
def test_run_chain(seen: list[int], arriving: int, code: str | None) -> None:
    events = chain(*[{"resource.resource_id": f"grp-{i}"} for i in range(6)])
    history = [events[i] for i in seen]
    ev = events[arriving]
    if arriving in seen:  # a different event claiming a step already seen
        ev = event({"step": arriving, "resource.resource_id": "grp-again",
                    "evidence.prev_event_hash": ev["evidence"]["prev_event_hash"]})
    found = _evd(ev, history)
    assert found == ([code] if code else []), found


def test_gap_names_both_ends() -> None:
    events = chain({}, {}, {})
    [finding] = [f for f in score(events[2], context_for(events[2], events[:1])).findings if f.code == "AG-EVD-003"]
    assert finding.related_event_ids == (events[0]["event_id"], events[2]["event_id"])
    assert "step 1 never arrived" in finding.message


def test_missing_prev_hash_breaks_the_chain() -> None:
    assert "AG-EVD-003" in _evd(event({"step": 3, "evidence.prev_event_hash": None}))


def test_prev_hash_not_matching_previous_step() -> None:
    events = chain({}, {"evidence.prev_event_hash": "cd" * 32})
    assert _evd(events[1], events[:1]) == ["AG-EVD-003"]


def test_exact_replay() -> None:
    ev = event()
    assert _evd(ev, [ev]) == ["AG-EVD-004"]


def test_exact_replay_of_the_latest_step_after_the_seen_map_evicted_it() -> None:
    """Review rev_rules #5: the seen map is capped; the run's own history still holds the replayed step."""
    events = chain({}, {})
    assert _evd(events[1], events, seen_event_hashes={}) == ["AG-EVD-004"]
    assert _evd(events[1], events[:1], seen_event_hashes={}) == []  # benign: the first delivery


def test_duplicate_id_with_different_content() -> None:
    first = event()
    second = event({"event_id": first["event_id"], "step": 1, "resource.resource_id": "grp-finance",
                    "evidence.prev_event_hash": first["evidence"]["event_hash"]})
    assert _evd(second, [first]) == ["AG-EVD-005"]
    # also when the seen map has evicted it but the run history still holds it
    assert _evd(second, [first], seen_event_hashes={}) == ["AG-EVD-005"]


SIG_CASES: list[tuple[str, dict[str, Any], bool, str | None]] = [
    # (id, how the event is signed, require_signatures, expected)
    ("unsigned-required", {}, True, "AG-EVD-006"),
    ("benign:unsigned-optional", {}, False, None),
    ("good-signature-required", {"key": KEY}, True, None),
    ("bad-signature", {"key": ("k1", b"other-key")}, False, "AG-EVD-006"),
    ("bad-signature-required", {"key": ("k1", b"other-key")}, True, "AG-EVD-006"),
    ("unknown-key-required", {"key": ("k9", b"x")}, True, "AG-EVD-006"),
    ("benign:unknown-key-optional", {"key": ("k9", b"x")}, False, None),
]


@pytest.mark.parametrize(("how", "require", "code"), [c[1:] for c in SIG_CASES], ids=[c[0] for c in SIG_CASES])
def test_signatures(how: dict[str, Any], require: bool, code: str | None) -> None:
    ev = event(**how)
    found = _evd(ev, signing_keys={KEY[0]: KEY[1]}, require_signatures=require)
    assert found == ([code] if code else []), found


def test_signature_over_tampered_content_fails() -> None:
    ev = event(key=KEY)
    ev["resource"]["resource_id"] = "grp-admins"
    assert set(_evd(ev, signing_keys={KEY[0]: KEY[1]})) == {"AG-EVD-002", "AG-EVD-006"}


BINDING_CASES: list[tuple[str, str, dict[str, tuple[str, ...]], str | None]] = [
    # (id, the event's agent_id, key_agents, expected)
    ("benign:registered-agent", "agent-jml-01", {"k1": ("agent-jml-01",)}, None),
    ("benign:registered-by-pattern", "agent-jml-07", {"k1": ("agent-jml-*",)}, None),
    ("benign:no-bindings-configured", "agent-other", {}, None),
    ("other-agent", "agent-payroll-02", {"k1": ("agent-jml-01",)}, "AG-EVD-007"),
    ("key-bound-to-nobody", "agent-jml-01", {"k2": ("agent-jml-01",)}, "AG-EVD-007"),
    ("pattern-is-not-a-prefix", "xagent-jml-01", {"k1": ("agent-jml-*",)}, "AG-EVD-007"),
]


@pytest.mark.parametrize(("agent", "bindings", "code"), [c[1:] for c in BINDING_CASES],
                         ids=[c[0] for c in BINDING_CASES])
def test_a_signature_binds_the_agent(agent: str, bindings: dict[str, tuple[str, ...]], code: str | None) -> None:
    ev = event({"agent.agent_id": agent}, key=KEY)
    found = _evd(ev, signing_keys={KEY[0]: KEY[1]}, require_signatures=True, key_agents=bindings)
    assert found == ([code] if code else []), found


def test_a_bad_signature_is_006_not_007() -> None:
    """Binding is judged only for signatures that verify: a forged one is AG-EVD-006 alone."""
    ev = event({"agent.agent_id": "agent-payroll-02"}, key=("k1", b"other-key"))
    found = _evd(ev, signing_keys={KEY[0]: KEY[1]}, key_agents={"k1": ("agent-jml-01",)})
    assert found == ["AG-EVD-006"]


# A run first seen at step > 0: AG-EVD-003 when the context is known to hold every run of the partition
# over the window (ScoringContext.runs_complete), silence when it is not (after a partial replay, evictions).
@pytest.mark.parametrize(("step", "complete", "fires"), [
    (3, True, True),
    (1, True, True),
    (3, False, False),  # benign: the context may lack the earlier steps (partial replay, evicted runs)
    (0, True, False),   # benign: a run's first step
], ids=["first-seen-at-3", "first-seen-at-1", "benign:context-incomplete", "benign:step-0"])
def test_run_first_seen_after_step_0(step: int, complete: bool, fires: bool) -> None:
    ev = event({"run_id": "run-fresh", "step": step, "evidence.prev_event_hash": "ab" * 32 if step else None})
    assert ("AG-EVD-003" in _evd(ev, runs_complete=complete)) is fires


def test_run_first_seen_after_step_0_names_what_is_missing() -> None:
    ev = event({"run_id": "run-fresh", "step": 4, "evidence.prev_event_hash": "ab" * 32})
    [finding] = [f for f in score(ev, context_for(ev, runs_complete=True)).findings if f.code == "AG-EVD-003"]
    assert "first seen at step 4: steps 0-3 never arrived" in finding.message
    assert finding.related_event_ids == (ev["event_id"],)


def test_a_continued_run_is_checked_as_before_when_the_context_is_complete() -> None:
    events = chain({}, {}, {})
    assert _evd(events[2], events[:2], runs_complete=True) == []  # benign: the replay holds steps 0 and 1
    assert _evd(events[2], events[:1], runs_complete=True) == ["AG-EVD-003"]  # the usual gap, once
