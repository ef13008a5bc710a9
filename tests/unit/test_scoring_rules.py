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
