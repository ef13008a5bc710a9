"""Hidden escalation: multi-step patterns in which every step may pass the per-event rules but the
chain ends in privilege. Each is reported once, critical, on the event that completes it, with
``related_event_ids`` naming every step of the chain (oldest first, the completing event last).

History: the union of ``ctx.run_history``, ``ctx.target_history`` and ``ctx.agent_history`` within
``escalation.window_seconds`` of the event's own time, so a chain may span runs when it stays on one
target or one agent.

Approval: a chain counts as approved only when a human held final authority over its completing step
(``decision.authority == "human"`` with an ``approved_by`` that names someone other than the agent, its
principal and the target: :func:`rules.human_approved`). A per-step ``approved_by`` under policy-engine
authority satisfies AG-AUTH-001 for that step, but the approver saw one step, not the chain, which is
exactly what these patterns exploit. Transient privilege is the exception: it is exempt when the grant
itself was human-decided (approved just-in-time access).
"""

from __future__ import annotations

from ..events import ACCOUNT_REVOKES, ENTITLEMENT_GRANTS, REVOKES, TransitionDict, identity_key, name_key
from .catalogue import ASI03, ASI07, ASI10, DE_AE, NHI5, NHI9, PR_AA_05, C, S, rule, spec
from .context import InForce, ScoringContext, access_name, access_names, same_access
from .findings import Finding
from .rules import granted_access, human_approved, is_privileged, is_self_grant, tie_rank, tier_of

ESC_FIELDS = ("agent.agent_id", "agent.on_behalf_of", "target.identity_id", "action", "resource.resource_id",
              "resource.entitlement", "resource.privilege_tier", "decision.authority", "decision.approved_by")
"""The evidence fields of every escalation finding, here and across runs (:mod:`crossrun`)."""



def in_event_time(h: TransitionDict) -> tuple[int, int, str, int]:
    """Sort key of a history: event time; within a millisecond, which has no order of its own, the order that
    lets a chain complete (:func:`~.rules.tie_rank`: grants by tier, then revokes), as the correlator orders
    facts; then run and step. By run id alone, a climb stamped in one millisecond completed or not depending
    on how the agent named its runs."""
    return (h["occurred_at"], tie_rank(h), h["run_id"], h["step"])


def _history(ev: TransitionDict, ctx: ScoringContext) -> list[TransitionDict]:
    """Earlier events of the same run, target or agent inside the window; deduplicated, oldest first."""
    lo = ev["occurred_at"] - ctx.governance.escalation.window_seconds * 1000
    seen = {(ev["event_id"], ev["evidence"]["event_hash"])}
    out = []
    for source in (ctx.run_history, ctx.target_history, ctx.agent_history):
        for h in source:
            key = (h["event_id"], h["evidence"]["event_hash"])
            if h["occurred_at"] >= lo and key not in seen:
                seen.add(key)
                out.append(h)
    out.sort(key=in_event_time)
    return out


def _on_target(ev: TransitionDict, ctx: ScoringContext) -> list[TransitionDict]:
    """Like :func:`_history`, for patterns on one target: every such event is in the run or target history."""
    target = ev["target"]["identity_id"]
    lo = ev["occurred_at"] - ctx.governance.escalation.window_seconds * 1000
    seen = {(ev["event_id"], ev["evidence"]["event_hash"])}
    out = []
    for source in (ctx.run_history, ctx.target_history):
        for h in source:
            key = (h["event_id"], h["evidence"]["event_hash"])
            if h["target"]["identity_id"] == target and h["occurred_at"] >= lo and key not in seen:
                seen.add(key)
                out.append(h)
    out.sort(key=in_event_time)
    return out


def _where(h: TransitionDict) -> str:
    return f"{h['run_id']}#{h['step']}"


def _ids(chain: list[TransitionDict]) -> tuple[str, ...]:
    return tuple(h["event_id"] for h in chain)


# -- AG-ESC-001 group nesting ------------------------------------------------------------------------

def _created(h: TransitionDict) -> tuple[str, str] | None:
    """The group an executed ``create_group`` made, by its target and its resource id, as identity keys."""
    if h["action"] != "create_group" or h["decision"]["outcome"] != "granted":
        return None
    return identity_key(h["target"]["identity_id"]), identity_key(h["resource"]["resource_id"])


def group_key(h: TransitionDict, field: str) -> str:
    """A group named by ``h`` (``"target"``: the identity granted access; ``"resource"``: the group a member
    is added to) as :func:`~pipeline.events.identity_key` folds it. A group is an identity of the directory,
    which matches it without case (docs/policy.md): ``create_group grp-x`` then ``add_group_member`` to
    ``GRP-X`` is one group, and keyed apart the chain never met in one key. The correlator's facts already
    carry the target as an identity key (:func:`pipeline.facts.as_event`), not the resource id."""
    return identity_key(h["target"]["identity_id"] if field == "target" else h["resource"]["resource_id"])


ESC_GROUP_NESTING = spec(
    "AG-ESC-001", "Hidden escalation: group nesting", S.critical, C.escalation,
    "The agent created a group, put itself or its principal in it, and had a privileged role or entitlement "
    "granted to the group, with no human authority over the completing step. Groups and principals are "
    "matched as identities (without case, NFKC), as the directory matches them.",
    ESC_FIELDS, (ASI03, ASI10, NHI5, PR_AA_05), pattern="group_nesting",
)


@rule(ESC_GROUP_NESTING)
def group_nesting(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if ev["action"] not in ENTITLEMENT_GRANTS or not granted_access(ev) or human_approved(ev):
        return []
    policy = ctx.governance
    groups = set()  # as identity keys, as every group is compared here (group_key)
    if ev["action"] == "add_group_member":
        groups.add(group_key(ev, "resource"))  # as the "add a principal to the group" step
    if is_privileged(ev, policy):
        groups.add(group_key(ev, "target"))  # as the "grant the group privilege" step
    # Cheap pre-check before merging history: most events never meet a freshly created group.
    if not any(h["action"] == "create_group" and (made := _created(h)) and groups.intersection(made)
               for src in (ctx.run_history, ctx.target_history, ctx.agent_history) for h in src):
        return []
    hist = _history(ev, ctx)
    for group in sorted(groups):
        found = _group_chain(ev, hist, group, ctx)
        if found:
            return [found]
    return []


def _group_chain(ev: TransitionDict, hist: list[TransitionDict], group: str, ctx: ScoringContext) -> Finding | None:
    policy = ctx.governance
    start = next((i for i, h in enumerate(hist) if (made := _created(h)) and group in made), None)
    if start is None:
        return None
    create, steps = hist[start], [*hist[start + 1:], ev]
    # Groups and principals compare as identity keys: an agent spelling itself, its principal or the group
    # otherwise in one step is still the same identity to the directory.
    principals = {_ident(create["agent"]["agent_id"]), _ident(create["agent"]["on_behalf_of"]),
                  _ident(ev["agent"]["agent_id"]), _ident(ev["agent"]["on_behalf_of"])}
    adds = {id(h): h for h in steps if h["action"] == "add_group_member" and group_key(h, "resource") == group}
    for h in adds.values():
        principals.update((_ident(h["agent"]["agent_id"]), _ident(h["agent"]["on_behalf_of"])))
    principals.discard(None)
    add = grant = None
    for h in steps:
        if not granted_access(h):
            continue
        if add is None and id(h) in adds \
                and group_key(h, "target") in principals:
            add = h
        elif grant is None and h["action"] in ENTITLEMENT_GRANTS and group_key(h, "target") == group \
                and is_privileged(h, policy):
            grant = h
        if add is not None and grant is not None:
            if h is not ev:
                return None  # completed (and reported or approved) earlier
            break
    if add is None or grant is None:
        return None
    chain = sorted((create, add, grant), key=lambda h: 1 if h is ev else 0)
    return ESC_GROUP_NESTING.finding(
        f"group_nesting: agent {ev['agent']['agent_id']!r} created group {group!r} ({_where(create)}), added "
        f"{add['target']['identity_id']!r} to it ({_where(add)}) and granted it privileged {access_name(grant)!r} "
        f"({_where(grant)}) with no human authority", _ids(chain))


def _ident(value: str | None) -> str | None:
    return None if value is None else identity_key(value)


# -- AG-ESC-002 tier stepping ---------------------------------------------------------------------------

ESC_TIER_STEPPING = spec(
    "AG-ESC-002", "Hidden escalation: tier stepping", S.critical, C.escalation,
    "One identity was granted access at strictly increasing privilege tiers, ending at the privileged tier "
    "(privileged.min_tier, 3 by default), with no human authority over the final step: each step looks "
    "small, the sum is admin. Only the window's grants without human authority are steps; an earlier "
    "privileged grant hides nothing unless it completed such a climb itself (reported then).",
    ESC_FIELDS, (ASI03, NHI5, PR_AA_05), pattern="tier_stepping",
)


@rule(ESC_TIER_STEPPING)
def tier_stepping(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    policy = ctx.governance
    top = policy.privileged.min_tier
    if not granted_access(ev) or tier_of(ev, policy) < top or human_approved(ev):
        return []
    target = ev["target"]["identity_id"]
    min_steps = ctx.governance.escalation.tier_stepping_min_steps
    # Only the unapproved steps of the window climb: a human-approved grant (just-in-time access, revoked
    # or not) is neither a step nor the end of one, so it cannot hide a climb that follows it.
    prior = [h for h in _on_target(ev, ctx) if granted_access(h) and not human_approved(h)]
    # Longest strictly increasing run of tiers below the top before this grant; ties keep the latest event.
    best: dict[int, list[TransitionDict]] = {}
    for h in prior:
        tier = tier_of(h, policy)
        below = max((best[t] for t in best if t < tier), key=len, default=[])
        if tier >= top:
            if len(below) + 1 >= min_steps:
                best = {}  # that grant completed a climb, reported then: its steps cannot complete another
            continue
        if len(below) + 1 >= len(best.get(tier, [])):
            best[tier] = [*below, h]
    chain = [*max(best.values(), key=len, default=[]), ev]
    if len(chain) < min_steps:
        return []
    steps = " -> ".join(f"tier {tier_of(h, policy)} {access_name(h)!r} ({_where(h)})" for h in chain)
    return [ESC_TIER_STEPPING.finding(
        f"tier_stepping: {target!r} stepped up {steps} with no human authority over the last step", _ids(chain))]


# -- AG-ESC-003 transient privilege ------------------------------------------------------------------------

ESC_TRANSIENT_PRIVILEGE = spec(
    "AG-ESC-003", "Hidden escalation: transient privilege", S.critical, C.escalation,
    "A privileged entitlement was granted and revoked again within the transient window: used and hidden "
    "before any review could see it. A revoke ends the grant when it names the same access by either name "
    "(the role's resource id for a grant labelled with an entitlement, or the other way round); disabling or "
    "deleting the account on that system revokes every grant on it.",
    ESC_FIELDS, (ASI03, ASI10, PR_AA_05, DE_AE), pattern="transient_privilege",
)


def _in_force(ev: TransitionDict, ctx: ScoringContext) -> InForce[TransitionDict]:
    """The executed grants on ``ev``'s target and system (as ``name_key`` folds it) still in force just before
    it, as the target sees them: the latest grant of each access name, unless a revoke of the same access
    (:func:`~.context.same_access`: spelt in another case or padding, or naming by its resource id a role
    granted with an entitlement, or the other way round), or of the account, came after it."""
    system = name_key(ev["resource"]["system"])
    held: InForce[TransitionDict] = InForce()
    for h in _on_target(ev, ctx):
        if h["decision"]["outcome"] != "granted" or name_key(h["resource"]["system"]) != system:
            continue
        if granted_access(h):
            held.grant(None, access_names(h), h)
        elif h["action"] in ACCOUNT_REVOKES:
            held.end_scope(None)  # the account went, with everything on it (reported then if it was transient)
        elif h["action"] in REVOKES:
            held.revoke(None, access_names(h))  # closed (and reported then if it was transient)
    return held


@rule(ESC_TRANSIENT_PRIVILEGE)
def transient_privilege(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    """A privileged grant ended within the transient window: by a revoke of its access (either of its names,
    :func:`~.context.same_access`), or by disabling or deleting the account on its system (which ends every
    grant there: one finding per privileged grant it ended, so each grant-and-end pair is one chain, seen
    whole by one scorer or else by the correlator)."""
    if ev["action"] not in REVOKES or ev["decision"]["outcome"] != "granted":
        return []
    policy = ctx.governance
    target, system = ev["target"]["identity_id"], ev["resource"]["system"]
    mine = access_names(ev)
    held = _in_force(ev, ctx)
    account = ev["action"] in ACCOUNT_REVOKES
    ended = [(g, names) for g, names in held.items() if account or same_access(mine, names)]
    window_ms = policy.escalation.transient_revoke_seconds * 1000
    out = []
    for grant, names in sorted(ended, key=lambda e: in_event_time(e[0])):
        held_ms = ev["occurred_at"] - grant["occurred_at"]
        if human_approved(grant) or held_ms > window_ms:
            continue
        # The revoke's own tier speaks for the access it names; an account's says nothing of other grants.
        if not (is_privileged(grant, policy) or (same_access(mine, names) and is_privileged(ev, policy))):
            continue
        how = (f"ended {max(held_ms, 0) / 1000:.0f}s later by {ev['action']} on {system!r}" if account
               else f"revoked {max(held_ms, 0) / 1000:.0f}s later")
        out.append(ESC_TRANSIENT_PRIVILEGE.finding(
            f"transient_privilege: privileged {access_name(grant)!r} on {system!r} granted to {target!r} by "
            f"{grant['agent']['agent_id']!r} ({_where(grant)}) and {how} ({_where(ev)})", _ids([grant, ev])))
    return out


# -- AG-ESC-004 delegation chain ending in a self-grant ---------------------------------------------------

def _link_into(hist: list[TransitionDict], before: int, agent: str, agents: set[str]) -> tuple[int, str] | None:
    """The latest event before ``before`` that passes power to ``agent``: another agent granted it access,
    or it acted on behalf of another agent. Returns (index, source agent)."""
    for i in range(before - 1, -1, -1):
        h = hist[i]
        actor, behalf = h["agent"]["agent_id"], h["agent"]["on_behalf_of"]
        if actor != agent and h["target"]["identity_id"] == agent and granted_access(h):
            return i, actor
        if actor == agent and behalf is not None and behalf != agent and behalf in agents:
            return i, behalf
    return None


ESC_DELEGATION_SELF_GRANT = spec(
    "AG-ESC-004", "Hidden escalation: delegation chain ending in a self-grant", S.critical, C.escalation,
    "Access was delegated from agent to agent, and the last agent granted access to itself or its principal.",
    ESC_FIELDS, (ASI07, ASI03, NHI9, PR_AA_05), pattern="delegation_self_grant",
)


@rule(ESC_DELEGATION_SELF_GRANT)
def delegation_self_grant(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not is_self_grant(ev) or human_approved(ev):
        return []
    hist = _history(ev, ctx)
    if not hist:
        return []
    me = ev["agent"]["agent_id"]
    agents = {h["agent"]["agent_id"] for h in hist} | {me}
    agents.update(h["target"]["identity_id"] for h in hist if h["target"]["identity_type"] == "agent")
    behalf = ev["agent"]["on_behalf_of"]
    cur, before, visited = me, len(hist), {me}
    links: list[tuple[int, str]] = []
    for _ in range(ctx.governance.escalation.max_delegation_depth):
        link = _link_into(hist, before, cur, agents)
        if link is None and not links and behalf in agents and behalf not in visited:
            assert behalf is not None
            cur = behalf  # this event itself is the on-behalf link; keep walking from the principal
            visited.add(cur)
            link = _link_into(hist, before, cur, agents)
        if link is None:
            break
        links.append(link)
        before, cur = link
        if cur in visited:
            break
        visited.add(cur)
    if not links:
        return []
    latest = links[0][0]
    if any(h["agent"]["agent_id"] == me and is_self_grant(h) and not human_approved(h) for h in hist[latest + 1:]):
        return []  # this chain already ended in a self-grant, reported then
    chain = [hist[i] for i, _ in reversed(links)] + [ev]
    path = " -> ".join([*(src for _, src in reversed(links)), me])
    return [ESC_DELEGATION_SELF_GRANT.finding(
        f"delegation_self_grant: delegation {path} ended with {me!r} granting {access_name(ev)!r} to "
        f"{ev['target']['identity_id']!r} ({_where(ev)})", _ids(chain))]
