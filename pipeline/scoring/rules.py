"""Per-event risk rules. Each is a pure function ``(event, context) -> list[Finding]``.

No I/O, no globals, no clock: the same event and context always give the same findings.
"""

from __future__ import annotations

from collections.abc import Callable

from ..events import ACCESS_CHANGES, GRANTS, TransitionDict
from . import catalogue as c
from .context import ScoringContext
from .findings import Finding

Rule = Callable[[TransitionDict, ScoringContext], list[Finding]]


def _granted_access(ev: TransitionDict) -> bool:
    return ev["action"] in GRANTS and ev["decision"]["outcome"] == "granted"


def privileged_without_approval(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    tier = ev["resource"]["privilege_tier"]
    tiers = ctx.policy.policy.boundary_for(ev["workflow_id"]).human_approval_tiers
    if not _granted_access(ev) or tier not in tiers or ev["decision"]["approved_by"]:
        return []
    what = ev["resource"]["entitlement"] or ev["resource"]["resource_id"]
    return [c.PRIVILEGED_WITHOUT_APPROVAL.finding(
        f"{ev['action']} of tier-{tier} {what!r} on {ev['resource']['system']!r} to "
        f"{ev['target']['identity_id']!r} granted with no approved_by"
    )]


def model_final_authority(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    d = ev["decision"]
    if d["authority"] != "model" or ev["action"] not in ACCESS_CHANGES or d["outcome"] != "granted":
        return []
    model = ev["agent"]["model_id"] or "unknown model"
    return [c.MODEL_FINAL_AUTHORITY.finding(
        f"{ev['action']} on {ev['target']['identity_id']!r} authorized by {model!r} (authority=model)"
    )]


def self_grant(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not _granted_access(ev):
        return []
    target = ev["target"]["identity_id"]
    agent = ev["agent"]
    if target == agent["agent_id"]:
        who = f"the agent itself ({target!r})"
    elif agent["on_behalf_of"] and target == agent["on_behalf_of"]:
        who = f"its principal {target!r}"
    else:
        return []
    return [c.SELF_GRANT.finding(f"agent {agent['agent_id']!r} granted {ev['action']} to {who}")]


def missing_evidence(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if ev["action"] not in ACCESS_CHANGES:
        return []
    missing = []
    if not ev["trigger"]["ref"]:
        missing.append("trigger.ref")
    if not ev["inputs_used"]:
        missing.append("inputs_used")
    if not ev["policy"]["policy_version"].strip():
        missing.append("policy.policy_version")
    if not missing:
        return []
    return [c.MISSING_EVIDENCE.finding(f"{ev['action']} without {', '.join(missing)}")]


RULES: tuple[Rule, ...] = (
    privileged_without_approval,
    model_final_authority,
    self_grant,
    missing_evidence,
)
