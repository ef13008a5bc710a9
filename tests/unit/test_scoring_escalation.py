"""Hidden escalation patterns: positives, reported once with every step named, and benign look-alikes."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.scoring.catalogue import CATALOGUE, ESCALATION_PATTERNS
from pipeline.scoring.engine import score
from pipeline.scoring.findings import Category, Severity
from pipeline.scoring.policy import default_policy_path
from tests.unit.scoring_factory import AGENT, PRINCIPAL, T0, chain, context_for, event, policy_with, replay

ROGUE = "agent-jml-03"
HUMAN: dict[str, Any] = {"decision.authority": "human", "decision.approved_by": "ciso"}
MGR: dict[str, Any] = {"decision.approved_by": "mgr-eng"}  # approved step, policy-engine authority


def _group(member: str = PRINCIPAL, grant: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"action": "create_group", "target.identity_id": "grp-tmp", "target.identity_type": "service",
         "resource.resource_id": "grp-tmp", "resource.privilege_tier": 0},
        {"action": "add_group_member", "target.identity_id": member, "target.identity_type": "service",
         "resource.resource_id": "grp-tmp", "agent.on_behalf_of": None},
        {"action": "assign_role", "target.identity_id": "grp-tmp", "target.identity_type": "service",
         "resource.resource_id": "role/GlobalAdmin", "resource.privilege_tier": 3, **MGR, **(grant or {})},
    ]


def _tiers(*tiers: int, last: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    steps = [{"action": "assign_role", "trigger.kind": "mover", "resource.system": "aws",
              "resource.resource_id": f"role/Step{t}", "resource.privilege_tier": t, **(MGR if t >= 2 else {})}
             for t in tiers]
    steps[-1].update(last or {})
    return steps


TRANSIENT = {"trigger.kind": "mover", "resource.system": "aws", "resource.resource_id": "role/Admin",
             "resource.entitlement": "aws-admin", "resource.privilege_tier": 3}


def _transient(revoke_after_ms: int, grant: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [{"action": "grant_entitlement", **TRANSIENT, **MGR, **(grant or {})},
            {"action": "revoke_entitlement", **TRANSIENT, "occurred_at": T0 + revoke_after_ms}]


DELEG = {"workflow_id": "access-request", "trigger.kind": "access_request", "trigger.ref": "REQ-1",
         "action": "grant_entitlement", "resource.system": "github", "resource.resource_id": "org-acme"}


def _delegation(final_target: str = "agent-access-02", final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {**DELEG, "agent.agent_id": "agent-access-01", "agent.on_behalf_of": None, "target.identity_id":
         "agent-access-02", "target.identity_type": "agent", "resource.entitlement": "delegate"},
        {**DELEG, "agent.agent_id": "agent-access-02", "agent.on_behalf_of": "agent-access-01",
         "target.identity_id": final_target, "target.identity_type": "agent" if final_target.startswith("agent")
         else "human", "resource.entitlement": "org-owner", "resource.privilege_tier": 3, **MGR, **(final or {})},
    ]


CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str, int | None]] = [
    # (id, steps, common changes, code, index of the completing step or None)
    ("group-nesting", _group(), {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
    ("group-nesting-agent-itself", _group(member=ROGUE), {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
    ("group-nesting-grant-before-add", [_group()[0], _group()[2], _group()[1]], {"agent.agent_id": ROGUE},
     "AG-ESC-001", 2),
    ("benign:group-used-legitimately", _group(member="u000042"), {}, "AG-ESC-001", None),
    ("benign:group-gets-low-privilege", _group(grant={"resource.resource_id": "role/Reader",
                                                       "resource.privilege_tier": 1}), {}, "AG-ESC-001", None),
    ("benign:group-grant-human-decided", _group(grant=HUMAN), {"agent.agent_id": ROGUE}, "AG-ESC-001", None),
    ("tier-stepping", _tiers(1, 2, 3), {}, "AG-ESC-002", 2),
    ("tier-stepping-from-zero", _tiers(0, 1, 3), {}, "AG-ESC-002", 2),
    ("benign:tier-increase-human-decided", _tiers(1, 2, 3, last=HUMAN), {}, "AG-ESC-002", None),
    ("benign:single-jump", _tiers(1, 3), {}, "AG-ESC-002", None),
    ("benign:stops-at-tier-2", _tiers(0, 1, 2), {}, "AG-ESC-002", None),
    ("transient-privilege", _transient(60_000), {}, "AG-ESC-003", 1),
    ("benign:revoke-long-after-grant", _transient(2 * 3_600_000 - 1), {}, "AG-ESC-003", None),
    ("benign:revoke-after-transient-window", _transient(901_000), {}, "AG-ESC-003", None),
    ("benign:jit-grant-human-decided", _transient(60_000, grant=HUMAN), {}, "AG-ESC-003", None),
    ("delegation-self-grant", _delegation(), {}, "AG-ESC-004", 1),
    ("delegation-grant-to-delegator", _delegation("agent-access-01"), {}, "AG-ESC-004", 1),
    ("benign:delegation-to-a-user", _delegation("u000077"), {}, "AG-ESC-004", None),
    ("benign:delegated-self-grant-human-decided", _delegation(final=HUMAN), {}, "AG-ESC-004", None),
]


@pytest.mark.parametrize(("steps", "common", "code", "completes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pattern(steps: list[dict[str, Any]], common: dict[str, Any], code: str, completes: int | None) -> None:
    events = chain(*steps, each=common)
    per_event = replay(events)
    hits = [i for i, found in enumerate(per_event) if code in found]
    assert hits == ([] if completes is None else [completes]), per_event
    if completes is not None:
        [finding] = [f for f in score(events[completes], context_for(events[completes], events[:completes])).findings
                     if f.code == code]
        assert finding.severity is Severity.critical and finding.category is Category.escalation
        assert finding.message.startswith(ESCALATION_PATTERNS[code] + ":")
        assert finding.related_event_ids[-1] == events[completes]["event_id"]
        assert set(finding.related_event_ids) <= {e["event_id"] for e in events}


def test_group_nesting_names_every_step() -> None:
    events = chain(*_group(), each={"agent.agent_id": ROGUE})
    [f] = [f for f in score(events[2], context_for(events[2], events[:2])).findings if f.code == "AG-ESC-001"]
    assert f.related_event_ids == tuple(e["event_id"] for e in events)


def test_tier_stepping_names_every_step() -> None:
    events = chain(*_tiers(0, 1, 2, 3))
    [f] = [f for f in score(events[3], context_for(events[3], events[:3])).findings if f.code == "AG-ESC-002"]
    assert f.related_event_ids == tuple(e["event_id"] for e in events)


def test_reported_once_not_on_later_events() -> None:
    events = chain(*_group(), _group()[2] | {"resource.resource_id": "role/PrivilegedRoleAdministrator"},
                   each={"agent.agent_id": ROGUE})
    assert [("AG-ESC-001" in found) for found in replay(events)] == [False, False, True, False]
    stepping = chain(*_tiers(1, 2, 3), _tiers(3)[0] | {"resource.resource_id": "role/Other"})
    assert [("AG-ESC-002" in found) for found in replay(stepping)] == [False, False, True, False]
    transient = chain(*_transient(60_000), _transient(0)[1] | {"occurred_at": T0 + 120_000})
    assert [("AG-ESC-003" in found) for found in replay(transient)] == [False, True, False]


def test_chain_across_runs_on_one_target() -> None:
    """Tier stepping split over three runs still completes: the target history joins them."""
    steps = _tiers(1, 2, 3)
    events = [event({**s, "run_id": f"run-{i}", "occurred_at": T0 + i * 60_000}) for i, s in enumerate(steps)]
    assert "AG-ESC-002" in replay(events)[2]


def test_chain_outside_the_window_is_not_joined() -> None:
    steps = _tiers(1, 2, 3)
    events = [event({**s, "run_id": f"run-{i}", "occurred_at": T0 + i * 3_000_000}) for i, s in enumerate(steps)]
    assert "AG-ESC-002" not in replay(events)[2]


def test_group_nesting_across_runs_by_one_agent() -> None:
    steps = _group()
    events = [event({**s, "run_id": f"run-g{i}", "agent.agent_id": ROGUE, "occurred_at": T0 + i * 1000})
              for i, s in enumerate(steps)]
    assert "AG-ESC-001" in replay(events)[2]


def test_escalation_patterns_are_the_closed_set_of_escalation_codes() -> None:
    esc = {code for code, s in CATALOGUE.items() if s.category is Category.escalation}
    assert set(ESCALATION_PATTERNS) == esc
    assert set(ESCALATION_PATTERNS.values()) == {"group_nesting", "tier_stepping", "transient_privilege",
                                                "delegation_self_grant", "delegation_laundering"}


def test_plain_self_grant_is_not_a_delegation_chain() -> None:
    ev = event({"target.identity_id": AGENT, "target.identity_type": "agent"})
    found = [f.code for f in score(ev, context_for(ev)).findings]
    assert "AG-AUTH-003" in found and "AG-ESC-004" not in found


def test_tier_stepping_ends_at_the_policys_privileged_tier() -> None:
    # The chain ends at privileged.min_tier, not at a hard-coded tier 3: 0 -> 1 -> 2 is escalation when
    # the policy makes tier 2 privileged (and is benign under the default policy, row stops-at-tier-2).
    text = default_policy_path().read_text()
    assert "  min_tier: 3\n" in text
    tier2 = policy_with(text.replace("  min_tier: 3\n", "  min_tier: 2\n"))
    events = chain(*_tiers(0, 1, 2))
    assert ["AG-ESC-002" in found for found in replay(events, policy=tier2)] == [False, False, True]
    assert not any("AG-ESC-002" in found for found in replay(events))
