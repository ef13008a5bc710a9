"""Drift: an agent behaving unlike its own past. Compared with ``ctx.baseline`` (aggregated from the store
over ``drift.baseline_window_seconds``) and, for rates and shares, with ``ctx.agent_history`` over
``drift.rate_window_seconds`` of event time.

Warm-up: no drift finding until the baseline holds ``drift.min_baseline_events`` events, so a new agent
does not page anyone for doing everything for the first time.

Rates from history are lower bounds: if the consumer caps history per agent, a rate above
cap/window is undercounted (a missed finding, never a false one).
"""

from __future__ import annotations

from ..events import TransitionDict
from .catalogue import ASI03, ASI06, ASI08, ASI10, DE_AE, DE_CM, NHI5, PR_AA_05, C, S, rule, spec
from .context import AgentBaseline, ScoringContext
from .findings import Finding
from .rules import granted_access, quoted, stale_decision, stale_share_over


def _warm(ctx: ScoringContext) -> AgentBaseline | None:
    b = ctx.baseline
    if b is None or b.events < ctx.governance.drift.min_baseline_events:
        return None
    return b


NEW_ACTION = spec(
    "AG-DRF-001", "New action for this agent", S.low, C.drift,
    "The agent took an action it never took in its baseline window.",
    ("agent.agent_id", "action"),
    (ASI10, DE_CM, DE_AE),
)


@rule(NEW_ACTION)
def new_action(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None or ev["action"] in b.actions:
        return []
    return [NEW_ACTION.finding(
        f"agent {b.agent_id!r} took {ev['action']!r}, never seen in its baseline of {b.events} events")]


NEW_SYSTEM = spec(
    "AG-DRF-002", "New system for this agent", S.medium, C.drift,
    "The agent acted on a system it never touched in its baseline window.",
    ("agent.agent_id", "resource.system"),
    (ASI10, DE_CM, DE_AE),
)


@rule(NEW_SYSTEM)
def new_system(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    system = ev["resource"]["system"]
    if b is None or system in b.systems:
        return []
    return [NEW_SYSTEM.finding(
        f"agent {b.agent_id!r} acted on system {system!r}, never seen in its baseline of {b.events} events")]


NEW_PRIVILEGE = spec(
    "AG-DRF-003", "New entitlement or higher tier than ever", S.medium, C.drift,
    "The agent granted an entitlement it never granted before, or at a higher privilege tier than its "
    "baseline maximum.",
    ("agent.agent_id", "resource.entitlement", "resource.privilege_tier"),
    (ASI10, ASI03, NHI5, DE_CM),
)


@rule(NEW_PRIVILEGE)
def new_privilege(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None or not granted_access(ev):
        return []
    res = ev["resource"]
    why = []
    if res["entitlement"] is not None and res["entitlement"] not in b.entitlements:
        why.append(f"new entitlement {res['entitlement']!r}")
    if res["privilege_tier"] > b.max_tier:
        why.append(f"tier {res['privilege_tier']} above its baseline maximum {b.max_tier}")
    if not why:
        return []
    return [NEW_PRIVILEGE.finding(f"agent {b.agent_id!r} granted {' and '.join(why)}")]


NEW_INPUT = spec(
    "AG-DRF-004", "New input attribute for this agent", S.low, C.drift,
    "The decision evaluated an input the agent never used in its baseline window.",
    ("agent.agent_id", "inputs_used"),
    (ASI06, ASI10, DE_CM),
)


@rule(NEW_INPUT)
def new_input(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None:
        return []
    new = sorted({i["name"] for i in ev["inputs_used"] if i["name"] not in b.inputs})
    if not new:
        return []
    return [NEW_INPUT.finding(
        f"agent {b.agent_id!r} evaluated new input(s) {quoted(new)}")]


def _recent(ev: TransitionDict, ctx: ScoringContext) -> list[TransitionDict]:
    lo = ev["occurred_at"] - ctx.governance.drift.rate_window_seconds * 1000
    agent = ev["agent"]["agent_id"]
    return [h for h in ctx.agent_history
            if h["occurred_at"] >= lo and h["agent"]["agent_id"] == agent and h["event_id"] != ev["event_id"]]


GRANT_RATE_DRIFT = spec(
    "AG-DRF-005", "Grant rate far above the agent's baseline", S.medium, C.drift,
    "The agent's grants per hour over the recent window exceed its baseline rate by more than the "
    "policy's factor.",
    ("agent.agent_id", "action", "decision.outcome", "occurred_at"),
    (ASI10, ASI08, DE_AE),
)


@rule(GRANT_RATE_DRIFT)
def grant_rate(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None or not granted_access(ev):
        return []
    d = ctx.governance.drift
    # Fewest grants in the window that would be drift; most events stop here without scanning history.
    needed = max(d.rate_min_grants, int(d.rate_factor * b.grants_per_hour * d.rate_window_seconds / 3600) + 1)
    if len(ctx.agent_history) + 1 < needed:
        return []
    grants = 1 + sum(1 for h in _recent(ev, ctx) if granted_access(h))
    per_hour = grants * 3600 / d.rate_window_seconds
    if grants < d.rate_min_grants or per_hour <= d.rate_factor * b.grants_per_hour:
        return []
    return [GRANT_RATE_DRIFT.finding(
        f"agent {b.agent_id!r} made {grants} grants in {d.rate_window_seconds}s ({per_hour:.1f}/h), more than "
        f"{d.rate_factor:g}x its baseline {b.grants_per_hour:.1f}/h")]


STALE_POLICY_SHARE = spec(
    "AG-DRF-006", "Policy drift: share of stale policy versions", S.medium, C.drift,
    "Over the recent window, more of the agent's decisions than the policy's threshold ran under "
    "unapproved policy versions.",
    ("agent.agent_id", "policy.policy_id", "policy.policy_version"),
    (ASI10, PR_AA_05, DE_CM),
)


@rule(STALE_POLICY_SHARE)
def stale_policy_share(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    policy = ctx.governance
    ref = ev["policy"]
    b = _warm(ctx)
    # Only a stale decision can raise it: the finding points at an event that is part of the drift.
    if b is None or not stale_decision(policy, ev):
        return []
    recent = _recent(ev, ctx)
    n = len(recent) + 1
    stale = 1 + sum(1 for h in recent if stale_decision(policy, h))
    if not stale_share_over(stale, n, policy):
        return []
    share = stale / n
    return [STALE_POLICY_SHARE.finding(
        f"agent {b.agent_id!r}: {stale} of its last {n} decisions ({share:.0%}) ran under unapproved policy "
        f"versions, now {ref['policy_id']!r} {ref['policy_version']!r} (threshold "
        f"{policy.drift.stale_policy_share:.0%}, baseline {b.stale_policy_share:.0%})")]

