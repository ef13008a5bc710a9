"""Lifecycle rules: access follows the joiner/mover/leaver lifecycle and the requests that justify it.

Per workflow, ``lifecycle`` in the policy says which lifecycle states block which grants, which trigger
kinds may cause which actions, and which trigger kinds justify an access change at all.
"""

from __future__ import annotations

from ..events import ACCESS_CHANGES, TransitionDict, is_blank
from .catalogue import ASI01, ASI02, ASI03, NHI1, PR_AA_01, PR_AA_05, C, S, rule, spec
from .context import ScoringContext, access_name
from .findings import Finding
from .rules import granted_access

GRANT_TO_INACTIVE = spec(
    "AG-LCM-001", "Access granted to a terminated or pre-hire identity", S.high, C.risk,
    "Access was granted to an identity whose lifecycle state blocks that grant (terminated; pre-hire "
    "beyond account creation).",
    ("action", "target.identity_id", "target.lifecycle_state", "decision.outcome"),
    (NHI1, ASI03, PR_AA_01, PR_AA_05),
)


@rule(GRANT_TO_INACTIVE)
def grant_to_inactive(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not granted_access(ev):
        return []
    state = ev["target"]["lifecycle_state"]
    still_allowed = ctx.governance.boundary_for(ev["workflow_id"]).blocked_states.get(state)
    if still_allowed is None or ev["action"] in still_allowed:
        return []
    return [GRANT_TO_INACTIVE.finding(
        f"{ev['action']} of {access_name(ev)!r} granted to {ev['target']['identity_id']!r}, "
        f"whose lifecycle state is {state!r}")]


TRIGGER_ACTION_MISMATCH = spec(
    "AG-LCM-002", "Trigger kind does not allow this action", S.high, C.risk,
    "The workflow's lifecycle rules do not let this trigger kind cause this action (e.g. a leaver "
    "that grants access).",
    ("workflow_id", "trigger.kind", "action"),
    (ASI01, ASI02, PR_AA_01, PR_AA_05),
)


@rule(TRIGGER_ACTION_MISMATCH)
def trigger_action_mismatch(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    kind = ev["trigger"]["kind"]
    allowed = ctx.governance.boundary_for(ev["workflow_id"]).trigger_actions.get(kind)
    if allowed is None or ev["action"] in allowed:
        return []
    ref = ev["trigger"]["ref"]
    return [TRIGGER_ACTION_MISMATCH.finding(
        f"{kind} trigger {'(no ref)' if is_blank(ref) else repr(ref)} caused {ev['action']!r}, which the lifecycle "
        f"rules of {ev['workflow_id']!r} do not allow for {kind}")]


UNTRIGGERED_ACCESS_CHANGE = spec(
    "AG-LCM-003", "Access change not tied to a lifecycle or request trigger", S.medium, C.risk,
    "An access change was caused by a trigger kind the workflow does not accept as justification, or "
    "carries no trigger reference to trace it to an HR event or request (a blank or invisible one is none).",
    ("workflow_id", "trigger.kind", "trigger.ref", "action"),
    (ASI01, PR_AA_01, PR_AA_05),
)


@rule(UNTRIGGERED_ACCESS_CHANGE)
def untriggered_access_change(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if ev["action"] not in ACCESS_CHANGES or ev["decision"]["outcome"] != "granted":
        return []
    kind, ref = ev["trigger"]["kind"], ev["trigger"]["ref"]
    accepted = ctx.governance.boundary_for(ev["workflow_id"]).access_triggers
    if kind not in accepted:
        why = f"a {kind!r} trigger, which {ev['workflow_id']!r} does not accept for access changes"
    elif is_blank(ref):  # whitespace or invisible characters trace to nothing
        why = f"a {kind!r} trigger with no ref" if not ref else f"a {kind!r} trigger whose ref {ref!r} is blank"
    else:
        return []
    return [UNTRIGGERED_ACCESS_CHANGE.finding(
        f"{ev['action']} on {ev['target']['identity_id']!r} caused by {why}")]

