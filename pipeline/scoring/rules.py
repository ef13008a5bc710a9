"""Authority and approval rules, and the predicates every rule module shares.

A rule is a pure function ``(event, context) -> list[Finding]``: no I/O, no globals, no clock; the same
event and context always give the same findings. Each is declared with ``spec`` and registered with
``@rule`` beside it (``catalogue.RULES``; docs/rules.md "Adding a rule").
"""

from __future__ import annotations

from collections.abc import Sequence

from ..events import ACCESS_CHANGES, GRANTS, REVOKES, TransitionDict, identity_key, is_blank, name_key
from .catalogue import ASI03, ASI09, NHI5, PR_AA_05, C, S, rule, spec
from .context import ScoringContext, access_name
from .findings import Finding
from .policy import GovernancePolicy


def stale_decision(policy: GovernancePolicy, ev: TransitionDict) -> bool:
    """The decision ran under a policy version the governance policy does not approve (False when no versions
    are configured, or the event does not say: an access fact written before version 2 of its schema)."""
    ref = ev.get("policy") or {}
    if ref.get("policy_id") is None or ref.get("policy_version") is None:
        return False
    return policy.version_approved(ref["policy_id"], ref["policy_version"]) is False


def stale_share_over(stale: int, n: int, policy: GovernancePolicy) -> bool:
    """``stale`` of ``n`` decisions cross the drift threshold (at least ``stale_min_events`` of them, and a share
    over ``stale_policy_share``): AG-DRF-006 over one partition, AG-XRN-009 over all of them."""
    return n >= policy.drift.stale_min_events and stale / n > policy.drift.stale_policy_share


def granted_access(ev: TransitionDict) -> bool:
    """The event added access and the decision was to do it."""
    return ev["action"] in GRANTS and ev["decision"]["outcome"] == "granted"


_SHOWN = 5  # offending values named in a message; the rest are counted


def quoted(values: Sequence[str]) -> str:
    """The first few values, quoted, for a finding message: ``'a', 'b' and 3 more``."""
    shown = ", ".join(repr(v) for v in values[:_SHOWN])
    return shown if len(values) <= _SHOWN else f"{shown} and {len(values) - _SHOWN} more"


def is_privileged(ev: TransitionDict, policy: GovernancePolicy) -> bool:
    """At or above the privileged tier, or naming a privileged entitlement or group (names compared as
    :func:`pipeline.events.name_key`: case-insensitive, trimmed; docs/policy.md "Names")."""
    res = ev["resource"]
    return res["privilege_tier"] >= policy.privileged.min_tier or policy.privileged_name(
        res["resource_id"], res["entitlement"])


_FIRST_IN_ITS_MS = frozenset({"create_group", "disable_account"})


def tie_rank(ev: TransitionDict) -> int:
    """Where a fact stands among facts stamped the same millisecond, which have no order of their own: the
    order that lets a chain complete. First what a chain starts from (a group's creation, an account's
    disabling), then grants by privilege tier, lowest first, then revokes. Facts' event ids, which the
    agent chooses, decide only between facts of the same rank: ordered by id alone, an agent stamping a
    tier climb or a grant and its revoke with one millisecond, and picking its ids, hid the chain from
    rules that read only the facts before the one they judge."""
    rank = TIE_RANKS.get(ev["action"])
    if rank is not None:
        return rank
    tier = int(ev["resource"]["privilege_tier"] or 0)
    return 1 if tier <= 0 else 9 if tier >= 8 else 1 + tier


TIE_RANKS: dict[str, int] = {**dict.fromkeys(REVOKES, 10), **dict.fromkeys(_FIRST_IN_ITS_MS, 0)}
""":func:`tie_rank` of the actions ranked whatever their tier (a grant's rank is 1 + its tier, within 0..8)."""


def tier_of(ev: TransitionDict, policy: GovernancePolicy) -> int:
    """The tier a rule reads for ``ev``: its claimed tier, raised to the privileged tier when it names a
    privileged entitlement or group (privileged "whatever tier an event claims", docs/policy.md): a climb
    whose last step is ``Global Administrator`` labelled tier 2 still ends in privileged access."""
    res = ev["resource"]
    tier: int = res["privilege_tier"]
    top = policy.privileged.min_tier
    if tier < top and policy.privileged_name(res["resource_id"], res["entitlement"]):
        return top
    return tier


def approval_gap(ev: TransitionDict) -> str:
    """Why the event's ``approved_by`` is no independent approval, or ``""`` when it is one.

    Blank (absent, empty, only whitespace or invisible characters) names nobody. An approver who is the
    acting agent, its on_behalf_of principal or the target identity approved their own access: separation
    of duties needs someone else (compared as :func:`pipeline.events.name_key`, so a case variant of one's
    own id is still oneself)."""
    who = ev["decision"]["approved_by"]
    if is_blank(who):
        return "no approved_by" if not who else f"approved_by {who!r}, which names nobody"
    me = name_key(who)
    agent = ev["agent"]
    if me == name_key(agent["agent_id"]):
        return f"approved_by {who!r}, the acting agent itself"
    if agent["on_behalf_of"] is not None and me == name_key(agent["on_behalf_of"]):
        return f"approved_by {who!r}, the principal the agent acts for"
    if me == name_key(ev["target"]["identity_id"]):
        return f"approved_by {who!r}, the target identity itself"
    return ""


def independently_approved(ev: TransitionDict) -> bool:
    """``approved_by`` names someone other than the agent, its principal and the target (:func:`approval_gap`)."""
    return not approval_gap(ev)


def human_approved(ev: TransitionDict) -> bool:
    """A human held final authority and is named, and is not the agent, its principal or the target
    (:func:`approval_gap`). A per-step ``approved_by`` under policy-engine authority approves that step
    only; escalation patterns need this stronger form (see docs/rules.md)."""
    return ev["decision"]["authority"] == "human" and independently_approved(ev)


def is_self_grant(ev: TransitionDict) -> bool:
    """A granted access change whose target is the acting agent or its on_behalf_of principal, in any case
    (compared as :func:`pipeline.events.identity_key`: ``Agent-7`` granting ``agent-7`` grants itself)."""
    if not granted_access(ev):
        return False
    target, agent = identity_key(ev["target"]["identity_id"]), ev["agent"]
    behalf = agent["on_behalf_of"]
    return target == identity_key(agent["agent_id"]) or (behalf is not None and target == identity_key(behalf))


PRIVILEGED_WITHOUT_APPROVAL = spec(
    "AG-AUTH-001", "Privileged grant without human approval", S.critical, C.risk,
    "Access at a privilege tier the workflow says needs a human approval, or to an entitlement or group the "
    "policy lists as privileged, was granted with no independent approved_by: none, a blank or invisible "
    "one, or one naming the acting agent, its principal or the target itself (self-approval).",
    ("action", "decision.outcome", "resource.privilege_tier", "resource.entitlement", "resource.resource_id",
     "decision.approved_by"),
    (ASI03, NHI5, PR_AA_05),
)


@rule(PRIVILEGED_WITHOUT_APPROVAL)
def privileged_without_approval(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not granted_access(ev):
        return []
    policy = ctx.governance
    tier = ev["resource"]["privilege_tier"]
    if tier in policy.boundary_for(ev["workflow_id"]).human_approval_tiers:
        why = f"tier-{tier}"
    elif is_privileged(ev, policy):
        why = f"privileged (tier-{tier})"
    else:
        return []
    gap = approval_gap(ev)
    if not gap:
        return []
    return [PRIVILEGED_WITHOUT_APPROVAL.finding(
        f"{ev['action']} of {why} {access_name(ev)!r} on {ev['resource']['system']!r} to "
        f"{ev['target']['identity_id']!r} granted with {gap}"
    )]


MODEL_FINAL_AUTHORITY = spec(
    "AG-AUTH-002", "Model held final authority over an access change", S.high, C.risk,
    "The LLM's output was the final authorization of an access change, or the model recommended it and the "
    "final authority the event names is not evidenced (human authority naming no independent approver; a "
    "policy engine or rule with no policy.decision_id): no separation of interpretation from authorization.",
    ("action", "decision.authority", "decision.recommended_by", "decision.approved_by", "policy.decision_id",
     "decision.outcome", "agent.model_id"),
    (ASI09, ASI03, PR_AA_05),
)


def unevidenced_authority(ev: TransitionDict) -> str:
    """Why the final authority an event names is not evidenced, or ``""``: ``human`` needs an independent
    approver (:func:`approval_gap`), ``policy_engine`` and ``rule`` the id of their decision."""
    authority = ev["decision"]["authority"]
    if authority == "human":
        return approval_gap(ev)
    if authority in ("policy_engine", "rule") and is_blank(ev["policy"]["decision_id"]):
        return "no policy.decision_id"
    return ""


@rule(MODEL_FINAL_AUTHORITY)
def model_final_authority(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    d = ev["decision"]
    if ev["action"] not in ACCESS_CHANGES or d["outcome"] != "granted":
        return []
    model = ev["agent"]["model_id"] or "unknown model"
    if d["authority"] == "model":
        return [MODEL_FINAL_AUTHORITY.finding(
            f"{ev['action']} on {ev['target']['identity_id']!r} authorized by {model!r} (authority=model)")]
    # The model recommended it, and the authority said to have decided left no trace: the label alone moved the
    # decision off the model (red team, session 26: authority human with no approver, or the agent itself;
    # policy_engine or rule with no decision id; each drew no finding while authority model did).
    gap = unevidenced_authority(ev) if d["recommended_by"] == "model" else ""
    if not gap:
        return []
    return [MODEL_FINAL_AUTHORITY.finding(
        f"{ev['action']} on {ev['target']['identity_id']!r} recommended by {model!r}; the final authority it "
        f"names ({d['authority']}) is not evidenced: {gap}")]


SELF_GRANT = spec(
    "AG-AUTH-003", "Self-grant", S.critical, C.risk,
    "The agent granted access to itself or to the principal it acts on behalf of (ids compared in any case).",
    ("agent.agent_id", "agent.on_behalf_of", "target.identity_id", "action"),
    (ASI03, NHI5, PR_AA_05),
)


@rule(SELF_GRANT)
def self_grant(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not is_self_grant(ev):
        return []
    target, agent = ev["target"]["identity_id"], ev["agent"]
    itself = identity_key(target) == identity_key(agent["agent_id"])
    who = f"the agent itself ({target!r})" if itself else f"its principal {target!r}"
    return [SELF_GRANT.finding(
        f"agent {agent['agent_id']!r} granted {ev['action']} of {access_name(ev)!r} to {who}")]

