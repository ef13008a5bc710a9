"""Per-event rules (authority, boundary, policy version, lifecycle, SoD) against the default policy.

Each row: one event's changes from the benign base, the code under test, and whether it must fire.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.scoring.engine import score
from tests.unit.scoring_cases import HR, RULE_CASES, SOD, SOD_CASES
from tests.unit.scoring_factory import chain, codes, context_for, event, policy_with


@pytest.mark.parametrize(("changes", "code", "fires"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_per_event_rule(changes: dict[str, Any], code: str, fires: bool) -> None:
    ev = event(changes)
    found = codes(ev, context_for(ev))
    assert (code in found) is fires, found


def test_every_row_names_a_declared_code() -> None:
    """A benign row of a code no rule declares passes whatever the rules do: it would prove nothing."""
    from pipeline.scoring.catalogue import CATALOGUE

    assert {c[2] for c in RULE_CASES} - set(CATALOGUE) == set()


def test_benign_base_event_has_no_findings() -> None:
    ev = event()
    scored = score(ev, context_for(ev))
    assert scored.findings == () and scored.risk_score == 0 and scored.risk_level == "none"


def test_messages_name_the_offending_values() -> None:
    ev = event({"resource.system": "payroll-prod", "inputs_used": [*HR, {"name": "credit_score", "source": "m"}],
                "policy.policy_version": "2"})
    messages = {f.code: f.message for f in score(ev, context_for(ev)).findings}
    assert "'payroll-prod'" in messages["AG-BND-004"]
    assert "'credit_score'" in messages["AG-BND-001"]
    assert "'2'" in messages["AG-POL-001"]


# -- AG-SOD-001 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("before", "now", "fires"), [c[1:] for c in SOD_CASES], ids=[c[0] for c in SOD_CASES])
def test_separation_of_duties(before: list[dict[str, Any]], now: dict[str, Any], fires: bool) -> None:
    events = chain(*[{**SOD, **b} for b in before], {**SOD, **now})
    found = [f for f in score(events[-1], context_for(events[-1], events[:-1])).findings if f.code == "AG-SOD-001"]
    assert bool(found) is fires
    if fires:
        assert found[0].related_event_ids[-1] == events[-1]["event_id"]


@pytest.mark.parametrize(("revoke", "fires"), [
    ({"resource.entitlement": "AP-CREATE-VENDOR"}, False),  # the same entitlement, spelt in another case
    ({"resource.system": "SAP"}, False),                    # on the same system, spelt so
    ({"resource.system": "oracle"}, True),                  # another system's: the sap grant is still held
], ids=["name-case", "system-case", "other-system"])
def test_sod_holdings_are_per_system_and_compare_names_without_case(revoke: dict[str, str], fires: bool) -> None:
    """What the scorer holds for AG-SOD-001 is keyed as the policy's pairs and the correlator's holdings are:
    a revoke spelt in another case ended nothing (a false AG-SOD-001), one on another system ended the grant."""
    from pipeline.scoring.context import ScoringContext, entitlements_from_history
    from tests.unit.scoring_factory import default_policy

    def step(action: str, entitlement: str, n: int, **extra: str) -> Any:
        return event({**SOD, "action": action, "resource.system": "sap", "resource.entitlement": entitlement,
                      "step": n, **extra})

    history = [step("grant_entitlement", "ap-create-vendor", 1), step("revoke_entitlement", "ap-create-vendor", 2,
                                                                        **revoke)]
    partner = step("grant_entitlement", "ap-approve-payment", 3)
    ctx = ScoringContext(policy=default_policy(), run_history=tuple(history), target_history=tuple(history),
                         target_entitlements=entitlements_from_history(history))
    assert ("AG-SOD-001" in [f.code for f in score(partner, ctx).findings]) is fires


def test_sod_uses_target_entitlements_from_the_store() -> None:
    ev = event({**SOD, "resource.entitlement": "ap-approve-payment"})
    ctx = context_for(ev, target_entitlements=frozenset({"ap-create-vendor"}))
    assert "AG-SOD-001" in codes(ev, ctx)


# -- lifecycle settings of a workflow merge with defaults key by key (review rev_rules #3) -----------------

LIFECYCLE_POLICY = """
version: "t"
defaults:
  lifecycle:
    blocked_states: {terminated: [], on_leave: [], pre_hire: [create_account]}
    access_triggers: [joiner]
workflows:
  sets-trigger-actions-only:
    lifecycle: {trigger_actions: {leaver: [disable_account]}}
"""


@pytest.mark.parametrize(("changes", "code"), [
    ({"target.lifecycle_state": "on_leave"}, "AG-LCM-001"),  # defaults block on_leave
    ({"trigger.kind": "mover"}, "AG-LCM-003"),  # defaults accept only joiner
], ids=["blocked-state-from-defaults", "access-trigger-from-defaults"])
def test_workflow_keeps_the_lifecycle_defaults_it_does_not_set(changes: dict[str, Any], code: str) -> None:
    ev = event({"workflow_id": "sets-trigger-actions-only", **changes})
    assert code in codes(ev, context_for(ev, policy=policy_with(LIFECYCLE_POLICY)))


# -- AG-BND-005: an agent cannot pick its workflow's boundary by the workflow_id it sends (red team e3) -------

RELABEL = {"agent.agent_id": "agent-access-07", "agent.on_behalf_of": "svc-access-portal", "action": "create_account",
           "resource.system": "entra-id", "resource.resource_id": "user-account", "trigger.kind": "joiner",
           "trigger.ref": "REQ-4242", "target.identity_id": "ext-contractor-9",
           "inputs_used": [{"name": "department", "source": "request_form"}]}


def test_an_agent_relabelling_its_workflow_is_not_bound_to_it() -> None:
    """Red team session 26 (e3): agent-access-07 creating an entra-id account raised AG-BND-003, AG-BND-004 and
    AG-LCM-003 under workflow_id access-request and nothing under jml-provisioning, whose boundary allows it.
    The claimed workflow binds its agents (policies/default.yaml: agent-jml-*): the relabel is AG-BND-005."""
    own = event({**RELABEL, "workflow_id": "access-request"})
    assert codes(own, context_for(own)) == ["AG-BND-003", "AG-BND-004", "AG-LCM-003"]
    relabelled = event({**RELABEL, "workflow_id": "jml-provisioning"})
    [finding] = score(relabelled, context_for(relabelled)).findings
    assert finding.code == "AG-BND-005" and finding.severity == "high" and finding.category == "risk"
    assert finding.message == ("agent 'agent-access-07' is not bound to workflow 'jml-provisioning': "
                               "its agents are 'agent-jml-*'")


def test_an_unbound_agent_is_still_judged_by_the_boundary_it_names() -> None:
    """AG-BND-005 does not replace the named workflow's checks: what that boundary forbids is still flagged."""
    ev = event({**RELABEL, "workflow_id": "jml-provisioning", "resource.system": "github", "action": "modify_policy"})
    assert {"AG-BND-003", "AG-BND-004", "AG-BND-005"} <= set(codes(ev, context_for(ev)))


BOUND_POLICY = """
version: "t"
defaults: {allowed_actions: null}
workflows:
  bound: {agents: [agent-jml-*, Agent-Auth-01]}
  unbound: {}
"""


@pytest.mark.parametrize(("workflow", "agent", "fires"), [
    ("bound", "agent-jml-01", False),
    ("bound", "AGENT-JML-01", False),
    ("bound", "agent-auth-01", False),  # the pattern is folded too
    ("bound", "agent-auth-02", True),
    ("bound", "agent-access-07", True),
    ("unbound", "agent-access-07", False),  # a listed workflow without agents: any agent, as before
    ("not-listed", "agent-access-07", False),  # the defaults set no agents either
], ids=lambda v: str(v))
def test_only_a_workflow_that_lists_agents_binds_them(workflow: str, agent: str, fires: bool) -> None:
    ev = event({"workflow_id": workflow, "agent.agent_id": agent})
    found = codes(ev, context_for(ev, policy=policy_with(BOUND_POLICY)))
    assert ("AG-BND-005" in found) is fires, found
