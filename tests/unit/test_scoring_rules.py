"""Per-event rules (authority, boundary, policy version, lifecycle, SoD) against the default policy.

Each row: one event's changes from the benign base, the code under test, and whether it must fire.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.scoring.engine import score
from tests.unit.scoring_factory import AGENT, PRINCIPAL, chain, codes, context_for, event

HR = [{"name": "department", "source": "hris"}, {"name": "job_code", "source": "hris"}]

CASES: list[tuple[str, dict[str, Any], str, bool]] = [
    # AG-AUTH-001 privileged grant without human approval
    ("tier3-unapproved", {"action": "assign_role", "resource.resource_id": "role/X", "resource.privilege_tier": 3},
     "AG-AUTH-001", True),
    ("tier2-unapproved", {"action": "assign_role", "resource.privilege_tier": 2}, "AG-AUTH-001", True),
    ("listed-privileged-at-tier1", {"action": "grant_entitlement", "resource.entitlement": "aws-admin",
                                    "resource.system": "aws"}, "AG-AUTH-001", True),
    ("privileged-group-at-tier1", {"resource.resource_id": "grp-domain-admins"}, "AG-AUTH-001", True),
    ("benign:approved-privileged", {"action": "assign_role", "resource.privilege_tier": 3,
                                    "decision.approved_by": "mgr-eng"}, "AG-AUTH-001", False),
    ("benign:tier1", {}, "AG-AUTH-001", False),
    ("benign:denied-privileged", {"resource.privilege_tier": 3, "decision.outcome": "denied"}, "AG-AUTH-001", False),
    ("benign:revoke-privileged", {"action": "remove_role", "resource.privilege_tier": 3}, "AG-AUTH-001", False),
    ("auth-gateway-tier2-no-approval-tier", {"workflow_id": "auth-gateway", "action": "allow_auth",
                                             "resource.system": "okta", "resource.privilege_tier": 2,
                                             "trigger.kind": "signal",
                                             "inputs_used": [{"name": "risk_score", "source": "idp"}]},
     "AG-AUTH-001", False),
    # AG-AUTH-002 model final authority
    ("model-authority", {"decision.authority": "model"}, "AG-AUTH-002", True),
    ("benign:model-recommended-only", {"decision.recommended_by": "model"}, "AG-AUTH-002", False),
    ("benign:model-authority-denied", {"decision.authority": "model", "decision.outcome": "denied"},
     "AG-AUTH-002", False),
    ("benign:model-authority-recommend", {"decision.authority": "model", "action": "recommend",
                                          "decision.outcome": "recommended"}, "AG-AUTH-002", False),
    # AG-AUTH-003 self-grant
    ("self-grant-agent", {"target.identity_id": AGENT, "target.identity_type": "agent"}, "AG-AUTH-003", True),
    ("self-grant-principal", {"target.identity_id": PRINCIPAL, "target.identity_type": "service"},
     "AG-AUTH-003", True),
    ("benign:revoke-from-self", {"target.identity_id": AGENT, "action": "remove_group_member"}, "AG-AUTH-003", False),
    ("benign:grant-to-other-service", {"target.identity_id": "svc-other", "target.identity_type": "service"},
     "AG-AUTH-003", False),
    ("benign:no-principal", {"agent.on_behalf_of": None}, "AG-AUTH-003", False),
    # AG-BND-001 input outside allowlist
    ("input-outside", {"inputs_used": [*HR, {"name": "credit_score", "source": "model"}]}, "AG-BND-001", True),
    ("input-outside-for-action", {"action": "create_account", "resource.privilege_tier": 0,
                                  "inputs_used": [{"name": "termination_date", "source": "hris"}]},
     "AG-BND-001", True),
    ("benign:per-action-allowlist", {"action": "disable_account", "trigger.kind": "leaver",
                                     "target.lifecycle_state": "terminated",
                                     "inputs_used": [{"name": "termination_date", "source": "hris"}]},
     "AG-BND-001", False),
    ("benign:no-inputs", {"inputs_used": []}, "AG-BND-001", False),
    # AG-BND-002 too many signals
    ("nine-signals", {"inputs_used": [{"name": "department", "source": f"s{i}"} for i in range(9)]},
     "AG-BND-002", True),
    ("benign:eight-signals", {"inputs_used": [{"name": "department", "source": f"s{i}"} for i in range(8)]},
     "AG-BND-002", False),
    # AG-BND-003 action outside boundary
    ("modify-policy-in-jml", {"action": "modify_policy"}, "AG-BND-003", True),
    ("unknown-workflow-grants", {"workflow_id": "shadow-flow"}, "AG-BND-003", True),
    ("benign:unknown-workflow-recommends", {"workflow_id": "shadow-flow", "action": "recommend",
                                            "decision.outcome": "recommended"}, "AG-BND-003", False),
    # AG-BND-004 system outside boundary
    ("payroll-in-jml", {"resource.system": "payroll-prod"}, "AG-BND-004", True),
    ("benign:aws-in-jml", {"resource.system": "aws"}, "AG-BND-004", False),
    ("benign:unknown-workflow-any-system", {"workflow_id": "shadow-flow", "action": "recommend",
                                            "resource.system": "anything"}, "AG-BND-004", False),
    # AG-POL-001 stale or unapproved policy version
    ("stale-version", {"policy.policy_version": "2"}, "AG-POL-001", True),
    ("unknown-policy-id", {"policy.policy_id": "shadow-policy"}, "AG-POL-001", True),
    ("benign:previous-approved-version", {"policy.policy_version": "6"}, "AG-POL-001", False),
    # AG-LCM-001 grant to terminated / pre-hire identity
    ("grant-to-terminated", {"target.lifecycle_state": "terminated", "trigger.kind": "mover"}, "AG-LCM-001", True),
    ("group-to-pre-hire", {"target.lifecycle_state": "pre_hire"}, "AG-LCM-001", True),
    ("benign:account-for-pre-hire", {"target.lifecycle_state": "pre_hire", "action": "create_account",
                                     "resource.privilege_tier": 0}, "AG-LCM-001", False),
    ("benign:revoke-from-terminated", {"target.lifecycle_state": "terminated", "action": "revoke_entitlement",
                                       "trigger.kind": "leaver"}, "AG-LCM-001", False),
    ("benign:on-leave", {"target.lifecycle_state": "on_leave"}, "AG-LCM-001", False),
    # AG-LCM-002 trigger kind does not allow the action
    ("leaver-grants", {"trigger.kind": "leaver"}, "AG-LCM-002", True),
    ("scheduled-grants", {"trigger.kind": "scheduled"}, "AG-LCM-002", True),
    ("benign:leaver-revokes", {"trigger.kind": "leaver", "action": "remove_group_member"}, "AG-LCM-002", False),
    ("benign:unlisted-kind", {"trigger.kind": "manual"}, "AG-LCM-002", False),
    # AG-LCM-003 access change not tied to a lifecycle or request trigger
    ("manual-trigger", {"trigger.kind": "manual"}, "AG-LCM-003", True),
    ("joiner-without-ref", {"trigger.ref": None}, "AG-LCM-003", True),
    ("signal-in-jml", {"trigger.kind": "signal"}, "AG-LCM-003", True),
    ("benign:signal-in-auth-gateway", {"workflow_id": "auth-gateway", "action": "allow_auth", "trigger.kind": "signal",
                                       "resource.system": "okta", "resource.privilege_tier": 0,
                                       "inputs_used": [{"name": "risk_score", "source": "idp"}]},
     "AG-LCM-003", False),
    ("benign:manual-recommend", {"trigger.kind": "manual", "action": "recommend",
                                 "decision.outcome": "recommended"}, "AG-LCM-003", False),
    ("benign:manual-denied", {"trigger.kind": "manual", "decision.outcome": "denied"}, "AG-LCM-003", False),
]


@pytest.mark.parametrize(("changes", "code", "fires"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_per_event_rule(changes: dict[str, Any], code: str, fires: bool) -> None:
    ev = event(changes)
    found = codes(ev, context_for(ev))
    assert (code in found) is fires, found


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
SOD = {"workflow_id": "access-request", "trigger.kind": "access_request", "trigger.ref": "REQ-9",
       "action": "grant_entitlement", "resource.system": "sap", "resource.resource_id": "sap-fi"}

SOD_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], bool]] = [
    ("pair-completed", [{"resource.entitlement": "ap-create-vendor"}], {"resource.entitlement": "ap-approve-payment"},
     True),
    ("pair-completed-other-order", [{"resource.entitlement": "ap-approve-payment"}],
     {"resource.entitlement": "ap-create-vendor"}, True),
    ("benign:first-half-revoked", [{"resource.entitlement": "ap-create-vendor"},
                                   {"resource.entitlement": "ap-create-vendor", "action": "revoke_entitlement"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:first-half-denied", [{"resource.entitlement": "ap-create-vendor", "decision.outcome": "denied"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:unrelated-entitlements", [{"resource.entitlement": "ap-create-vendor"}],
     {"resource.entitlement": "gl-post-journal"}, False),
    ("benign:halves-on-different-identities", [{"resource.entitlement": "ap-create-vendor",
                                                "target.identity_id": "u-other"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:pair-already-held", [{"resource.entitlement": "ap-create-vendor"},
                                  {"resource.entitlement": "ap-approve-payment"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
]


@pytest.mark.parametrize(("before", "now", "fires"), [c[1:] for c in SOD_CASES], ids=[c[0] for c in SOD_CASES])
def test_separation_of_duties(before: list[dict[str, Any]], now: dict[str, Any], fires: bool) -> None:
    events = chain(*[{**SOD, **b} for b in before], {**SOD, **now})
    found = [f for f in score(events[-1], context_for(events[-1], events[:-1])).findings if f.code == "AG-SOD-001"]
    assert bool(found) is fires
    if fires:
        assert found[0].related_event_ids[-1] == events[-1]["event_id"]


def test_sod_uses_target_entitlements_from_the_store() -> None:
    ev = event({**SOD, "resource.entitlement": "ap-approve-payment"})
    ctx = context_for(ev, target_entitlements=frozenset({"ap-create-vendor"}))
    assert "AG-SOD-001" in codes(ev, ctx)
