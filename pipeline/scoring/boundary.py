"""Decision-boundary rules: which agents may act in a workflow, what they may do, on which systems, with
which inputs, under which policy versions. All read the workflow's resolved boundary (``policy.boundary_for``)."""

from __future__ import annotations

from ..events import TransitionDict
from .catalogue import ASI01, ASI02, ASI03, ASI06, ASI10, DE_CM, NHI5, PR_AA_05, C, S, rule, spec
from .context import ScoringContext
from .findings import Finding
from .rules import quoted, stale_decision

INPUT_OUTSIDE_ALLOWLIST = spec(
    "AG-BND-001", "Input attribute outside the allowlist", S.medium, C.risk,
    "The decision evaluated an attribute or signal the workflow's allowlist for this action does not "
    "permit: a route for context poisoning or decisions on data the agent should not use.",
    ("workflow_id", "action", "inputs_used"),
    (ASI06, ASI01, PR_AA_05),
)


@rule(INPUT_OUTSIDE_ALLOWLIST)
def input_outside_allowlist(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    inputs = ev["inputs_used"]
    if not inputs:
        return []
    allowed = ctx.governance.boundary_for(ev["workflow_id"]).inputs_for(ev["action"])
    if allowed is None:
        return []
    bad = sorted({i["name"] for i in inputs if i["name"] not in allowed})
    if not bad:
        return []
    return [INPUT_OUTSIDE_ALLOWLIST.finding(
        f"{ev['action']} in {ev['workflow_id']!r} evaluated {quoted(bad)} outside the input allowlist")]


TOO_MANY_SIGNALS = spec(
    "AG-BND-002", "Too many signals (blast radius)", S.low, C.risk,
    "The decision evaluated more distinct inputs (name and source; a repeated entry counts once) than the "
    "workflow's max_signals: a wider attack surface and a decision no reviewer can follow.",
    ("workflow_id", "inputs_used"),
    (ASI06, ASI02, PR_AA_05),
)


@rule(TOO_MANY_SIGNALS)
def too_many_signals(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    cap = ctx.governance.boundary_for(ev["workflow_id"]).max_signals
    if cap is None or len(ev["inputs_used"]) <= cap:
        return []
    # Distinct signals: a repeated identical entry is no new signal, but one attribute read from several
    # sources is several (each source is its own way in).
    n = len({(i["name"], i["source"]) for i in ev["inputs_used"]})
    if n <= cap:
        return []
    return [TOO_MANY_SIGNALS.finding(
        f"{ev['action']} in {ev['workflow_id']!r} evaluated {n} signals, more than max_signals={cap}")]


ACTION_OUTSIDE_BOUNDARY = spec(
    "AG-BND-003", "Action outside the workflow boundary", S.high, C.risk,
    "The agent took an action its workflow is not allowed to take.",
    ("workflow_id", "action", "agent.agent_id"),
    (ASI02, ASI10, NHI5, PR_AA_05),
)


@rule(ACTION_OUTSIDE_BOUNDARY)
def action_outside_boundary(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    allowed = ctx.governance.boundary_for(ev["workflow_id"]).allowed_actions
    if allowed is None or ev["action"] in allowed:
        return []
    return [ACTION_OUTSIDE_BOUNDARY.finding(
        f"agent {ev['agent']['agent_id']!r} took {ev['action']!r}, not allowed in workflow {ev['workflow_id']!r}")]


SYSTEM_OUTSIDE_BOUNDARY = spec(
    "AG-BND-004", "Target system outside the workflow boundary", S.high, C.risk,
    "The agent acted on a system its workflow is not allowed to touch.",
    ("workflow_id", "resource.system", "agent.agent_id"),
    (ASI02, ASI10, NHI5, PR_AA_05),
)


@rule(SYSTEM_OUTSIDE_BOUNDARY)
def system_outside_boundary(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    allowed = ctx.governance.boundary_for(ev["workflow_id"]).allowed_systems
    system = ev["resource"]["system"]
    if allowed is None or system in allowed:
        return []
    return [SYSTEM_OUTSIDE_BOUNDARY.finding(
        f"agent {ev['agent']['agent_id']!r} acted on system {system!r}, outside workflow {ev['workflow_id']!r}")]


AGENT_OUTSIDE_WORKFLOW = spec(
    "AG-BND-005", "Agent not bound to the workflow", S.high, C.risk,
    "The event names a workflow whose policy lists the agents that may act in it (agents), and the acting "
    "agent matches none of them: an agent claiming another workflow's decision boundary (its actions, "
    "systems, inputs and triggers) by naming that workflow.",
    ("workflow_id", "agent.agent_id"),
    (ASI03, ASI10, NHI5, PR_AA_05),
)


@rule(AGENT_OUTSIDE_WORKFLOW)
def agent_outside_workflow(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    # The event's other boundary rules still judge it against the workflow it names: the finding is the claim.
    policy, workflow, agent = ctx.governance, ev["workflow_id"], ev["agent"]["agent_id"]
    if policy.agent_bound(workflow, agent):
        return []
    patterns = policy.boundary_for(workflow).agents or ()
    return [AGENT_OUTSIDE_WORKFLOW.finding(
        f"agent {agent!r} is not bound to workflow {workflow!r}: its agents are {quoted(patterns)}")]


UNAPPROVED_POLICY_VERSION = spec(
    "AG-POL-001", "Stale or unapproved policy version", S.medium, C.risk,
    "The decision was taken under a policy id or version that is not in the approved list: policy drift.",
    ("policy.policy_id", "policy.policy_version"),
    (ASI10, PR_AA_05, DE_CM),
)


@rule(UNAPPROVED_POLICY_VERSION)
def unapproved_policy_version(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    ref = ev["policy"]
    if not stale_decision(ctx.governance, ev):
        return []
    return [UNAPPROVED_POLICY_VERSION.finding(
        f"decision under {ref['policy_id']!r} version {ref['policy_version']!r}, which is not an approved version")]

