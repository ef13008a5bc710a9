"""AG-AUTH-002: the model's interpretation is kept apart from the final authorization, whatever the event calls
its authority. Red team, session 26: with the model's recommendation, ``authority: human`` naming no approver
(or the agent itself), ``rule``, or ``policy_engine`` without a decision id each drew no finding, while
``authority: model`` did. The final authority an event names must be evidenced."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.scoring_factory import AGENT, codes, context_for, event

GRANT = {"action": "grant_entitlement", "resource.privilege_tier": 1, "decision.recommended_by": "model",
         "agent.model_id": "gpt-iam-2026-10"}


@pytest.mark.parametrize(("label", "changes", "fires"), [
    ("model authority", {"decision.authority": "model"}, True),
    ("human, no approver", {"decision.authority": "human", "decision.approved_by": None}, True),
    ("human, the agent itself", {"decision.authority": "human", "decision.approved_by": AGENT.upper()}, True),
    ("rule, no decision id", {"decision.authority": "rule", "policy.decision_id": None}, True),
    ("policy engine, no decision id", {"decision.authority": "policy_engine", "policy.decision_id": None}, True),
    ("policy engine, blank decision id", {"decision.authority": "policy_engine", "policy.decision_id": " "}, True),
    # benign: the authority named is evidenced, or the model had no part, or nothing was granted
    ("benign: human with an independent approver", {"decision.authority": "human",
                                                    "decision.approved_by": "mgr-eng"}, False),
    ("benign: policy engine with its decision id", {"decision.authority": "policy_engine",
                                                    "policy.decision_id": "dec-7"}, False),
    ("benign: no model, no decision id", {"decision.authority": "policy_engine", "decision.recommended_by": "rule",
                                          "policy.decision_id": None}, False),
    ("benign: denied", {"decision.authority": "human", "decision.approved_by": None,
                        "decision.outcome": "denied"}, False),
])
def test_the_authority_a_model_recommended_change_names_must_be_evidenced(label: str, changes: dict[str, Any],
                                                                         fires: bool) -> None:
    ev = event(**{**GRANT, **changes})
    assert ("AG-AUTH-002" in codes(ev, context_for(ev))) is fires, label
