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
from . import catalogue as c
from .context import AgentBaseline, ScoringContext
from .findings import Finding
from .rules import Rule, granted_access


def _warm(ctx: ScoringContext) -> AgentBaseline | None:
    b = ctx.baseline
    if b is None or b.events < ctx.policy.policy.drift.min_baseline_events:
        return None
    return b


def new_action(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None or ev["action"] in b.actions:
        return []
    return [c.NEW_ACTION.finding(
        f"agent {b.agent_id!r} took {ev['action']!r}, never seen in its baseline of {b.events} events")]


def new_system(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    system = ev["resource"]["system"]
    if b is None or system in b.systems:
        return []
    return [c.NEW_SYSTEM.finding(
        f"agent {b.agent_id!r} acted on system {system!r}, never seen in its baseline of {b.events} events")]


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
    return [c.NEW_PRIVILEGE.finding(f"agent {b.agent_id!r} granted {' and '.join(why)}")]


def new_input(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None:
        return []
    new = sorted({i["name"] for i in ev["inputs_used"] if i["name"] not in b.inputs})
    if not new:
        return []
    return [c.NEW_INPUT.finding(
        f"agent {b.agent_id!r} evaluated new input(s) {', '.join(repr(n) for n in new[:5])}"
        + (f" and {len(new) - 5} more" if len(new) > 5 else ""))]


def _recent(ev: TransitionDict, ctx: ScoringContext) -> list[TransitionDict]:
    lo = ev["occurred_at"] - ctx.policy.policy.drift.rate_window_seconds * 1000
    agent = ev["agent"]["agent_id"]
    return [h for h in ctx.agent_history
            if h["occurred_at"] >= lo and h["agent"]["agent_id"] == agent and h["event_id"] != ev["event_id"]]


def grant_rate(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    b = _warm(ctx)
    if b is None or not granted_access(ev):
        return []
    d = ctx.policy.policy.drift
    # Fewest grants in the window that would be drift; most events stop here without scanning history.
    needed = max(d.rate_min_grants, int(d.rate_factor * b.grants_per_hour * d.rate_window_seconds / 3600) + 1)
    if len(ctx.agent_history) + 1 < needed:
        return []
    grants = 1 + sum(1 for h in _recent(ev, ctx) if granted_access(h))
    per_hour = grants * 3600 / d.rate_window_seconds
    if grants < d.rate_min_grants or per_hour <= d.rate_factor * b.grants_per_hour:
        return []
    return [c.GRANT_RATE_DRIFT.finding(
        f"agent {b.agent_id!r} made {grants} grants in {d.rate_window_seconds}s ({per_hour:.1f}/h), more than "
        f"{d.rate_factor:g}x its baseline {b.grants_per_hour:.1f}/h")]


def stale_policy_share(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    policy = ctx.policy.policy
    ref = ev["policy"]
    b = _warm(ctx)
    # Only a stale decision can raise it: the finding points at an event that is part of the drift.
    if b is None or policy.version_approved(ref["policy_id"], ref["policy_version"]) is not False:
        return []
    recent = _recent(ev, ctx)
    n = len(recent) + 1
    if n < policy.drift.stale_min_events:
        return []
    stale = 1 + sum(1 for h in recent
                    if policy.version_approved(h["policy"]["policy_id"], h["policy"]["policy_version"]) is False)
    share = stale / n
    if share <= policy.drift.stale_policy_share:
        return []
    return [c.STALE_POLICY_SHARE.finding(
        f"agent {b.agent_id!r}: {stale} of its last {n} decisions ({share:.0%}) ran under unapproved policy "
        f"versions, now {ref['policy_id']!r} {ref['policy_version']!r} (threshold "
        f"{policy.drift.stale_policy_share:.0%}, baseline {b.stale_policy_share:.0%})")]


DRIFT_RULES: tuple[Rule, ...] = (new_action, new_system, new_privilege, new_input, grant_rate, stale_policy_share)
