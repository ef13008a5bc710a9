"""Lifecycle rules: access follows the joiner/mover/leaver lifecycle and the requests that justify it.

Per workflow, ``lifecycle`` in the policy says which lifecycle states block which grants, which trigger
kinds may cause which actions, and which trigger kinds justify an access change at all.
"""

from __future__ import annotations

from ..events import ACCESS_CHANGES, TransitionDict
from . import catalogue as c
from .context import ScoringContext
from .findings import Finding
from .rules import Rule, access_name, granted_access


def grant_to_inactive(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not granted_access(ev):
        return []
    state = ev["target"]["lifecycle_state"]
    still_allowed = ctx.policy.policy.boundary_for(ev["workflow_id"]).blocked_states.get(state)
    if still_allowed is None or ev["action"] in still_allowed:
        return []
    return [c.GRANT_TO_INACTIVE.finding(
        f"{ev['action']} of {access_name(ev)!r} granted to {ev['target']['identity_id']!r}, "
        f"whose lifecycle state is {state!r}")]


def trigger_action_mismatch(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    kind = ev["trigger"]["kind"]
    allowed = ctx.policy.policy.boundary_for(ev["workflow_id"]).trigger_actions.get(kind)
    if allowed is None or ev["action"] in allowed:
        return []
    return [c.TRIGGER_ACTION_MISMATCH.finding(
        f"{kind} trigger {ev['trigger']['ref'] or '(no ref)'} caused {ev['action']!r}, which the lifecycle "
        f"rules of {ev['workflow_id']!r} do not allow for {kind}")]


def untriggered_access_change(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if ev["action"] not in ACCESS_CHANGES or ev["decision"]["outcome"] != "granted":
        return []
    kind, ref = ev["trigger"]["kind"], ev["trigger"]["ref"]
    accepted = ctx.policy.policy.boundary_for(ev["workflow_id"]).access_triggers
    if kind not in accepted:
        why = f"a {kind!r} trigger, which {ev['workflow_id']!r} does not accept for access changes"
    elif not ref:
        why = f"a {kind!r} trigger with no ref"
    else:
        return []
    return [c.UNTRIGGERED_ACCESS_CHANGE.finding(
        f"{ev['action']} on {ev['target']['identity_id']!r} caused by {why}")]


LIFECYCLE_RULES: tuple[Rule, ...] = (grant_to_inactive, trigger_action_mismatch, untriggered_access_change)
