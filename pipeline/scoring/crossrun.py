"""Cross-run rules: chains that span runs and partitions, evaluated by the correlator. Pure.

The correlator keys access facts by entity (target identity or agent) and calls these rules on each
fact in event-time order, with the earlier facts of the same key (``cx.history``), what the target held
before (``cx.holdings``, any age) and the delegation graph (``cx.delegations``). Facts are
transition-shaped (:func:`pipeline.facts.as_event`) plus ``source_partition`` and ``source_offset``,
so the per-run escalation rules in :mod:`escalation` are reused over the entity's whole history.

Division of labour with the scorer, so that one chain raises one finding: a scorer sees everything of
its own partition inside its context window, so the correlator reports a chain only when the scorer
could not have seen it whole: its events come from two or more source partitions, or (holdings) the
earlier half is older than the scorer's context. Delegation laundering has no per-run twin and is
always reported here.

Every finding attaches to the event that completed the chain, lists every event and run of the chain,
and has a deterministic id (:func:`finding_id`: rule + key + chain), so a replay stores it once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..events import (
    ACCOUNT_REVOKES,
    ENTITLEMENT_GRANTS,
    ENTITLEMENT_REVOKES,
    REVOKES,
    TransitionDict,
    identity_key,
    name_key,
)
from . import escalation
from .catalogue import (
    ASI03,
    ASI07,
    ASI08,
    ASI10,
    CATALOGUE,
    DE_AE,
    DE_CM,
    NHI1,
    NHI5,
    NHI9,
    PR_AA_05,
    PR_DS_01,
    C,
    Rule,
    RuleSpec,
    S,
    spec,
)
from .context import AgentBaseline, InForce, ScoringContext, access_name, access_names, same_access
from .escalation import ESC_FIELDS
from .policy import GovernancePolicy, LoadedPolicy
from .rules import (
    granted_access,
    human_approved,
    is_privileged,
    stale_decision,
    stale_share_over,
    tie_rank,
    tier_of,
)
from .sod import sod_partners_of


def finding_id(code: str, key: str, event_ids: Iterable[str]) -> str:
    """Deterministic: the same rule over the same entity and chain has the same id on every replica."""
    text = "\x1f".join([code, key, *event_ids])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


FactOrder = tuple[int, int, str, int, int]
"""A fact's place in event-time order: time, its rank among facts of the same millisecond
(:func:`tie_rank`), event id, source partition and offset (a total order)."""

def fact_order(ev: TransitionDict) -> FactOrder:
    """The order the correlator judges facts in (``KeyedState``'s), and the rules compare them by."""
    return (ev["occurred_at"], tie_rank(ev), ev["event_id"], ev["source_partition"], ev["source_offset"])


@dataclass(frozen=True, slots=True)
class CrossRunContext:
    """Read-only inputs of the cross-run rules for one fact."""

    policy: LoadedPolicy
    key: str
    """The entity the fact was keyed by (a target identity or an agent id)."""
    history: Sequence[TransitionDict] = ()
    """Earlier facts of the same key in event-time order (the correlator's window)."""
    holdings: Sequence[TransitionDict] = ()
    """Executed grants and revokes of the target, any age, from the holdings topic (event-time order)."""
    delegations: Callable[[str], Sequence[TransitionDict]] = field(default=lambda agent: ())
    """agent -> executed agent-to-agent grants and revokes *into* that agent, event-time order."""
    baseline: AgentBaseline | None = None
    scorer_window_ms: int = 3_600_000
    """A scorer's context window: older partners are out of any one scorer's sight."""
    recent_grants: Sequence[TransitionDict] | None = None
    """The agent's executed grants in the rate window before the fact, if the caller indexed them (the
    correlator does, so a busy agent costs O(log n) per fact); None means: derive from ``history``."""
    same_id: Sequence[TransitionDict] | None = None
    """Earlier facts of the key with the fact's event_id, if indexed; None means: scan ``history``."""
    decision_window: DecisionWindow | None = None
    """The stale-share rule's counts over the drift window, if the caller indexed them (the correlator does,
    so a stale decision of a busy agent costs O(log n), not a scan of its window)."""

    @property
    def governance(self) -> GovernancePolicy:
        """The governance policy the rules apply."""
        return self.policy.policy


@dataclass(frozen=True, slots=True)
class DecisionWindow:
    """An agent's access changes in the drift window before a fact, counted for AG-XRN-009; copies of the
    fact's own event_id are not counted (as when the rule scans the window itself)."""

    decisions: int
    stale: int
    """Of ``decisions``, those under an unapproved policy version."""
    own_decisions: int
    """Of ``decisions``, those from the fact's own source partition."""
    own_stale: int
    stale_partitions: frozenset[int]
    """Source partitions with a stale decision in the window."""
    latest_stale: Sequence[TransitionDict]
    """The latest stale decisions (at most ``MAX_EVIDENCE``), event-time order."""


@dataclass(frozen=True, slots=True)
class CrossRunFinding:
    """One chain found by the correlator, attached to its completing event ``chain[-1]``."""

    spec: RuleSpec
    key: str
    message: str
    chain: tuple[TransitionDict, ...]

    @property
    def event(self) -> TransitionDict:
        return self.chain[-1]

    @property
    def event_ids(self) -> tuple[str, ...]:
        return tuple(h["event_id"] for h in self.chain)

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h["run_id"] for h in self.chain))

    @property
    def partitions(self) -> tuple[int, ...]:
        return tuple(int(h["source_partition"]) for h in self.chain)

    @property
    def finding_id(self) -> str:
        ids = self.event_ids
        if len(set(ids)) < len(ids):
            # Copies of one event id (AG-XRN-006): each copy is told apart by its run, so a copy forged into a
            # third run is a chain (and a finding) of its own, not the first one again. Not by its partition:
            # the same events over 6 or 12 partitions must give the same ids.
            ids = tuple(f"{h['event_id']}@{h['run_id']}" for h in self.chain)
        return finding_id(self.spec.code, self.key, ids)

    @property
    def pattern(self) -> str:
        return self.spec.pattern or ""

    def to_avro(self, detected_at_ms: int, version: str, policy_version: str) -> dict[str, Any]:
        ev = self.event
        return {
            "finding_id": self.finding_id, "code": self.spec.code, "severity": self.spec.severity.value,
            "category": self.spec.category.value, "pattern": self.pattern, "message": self.message,
            "entity_key": self.key, "event_id": ev["event_id"], "run_id": ev["run_id"],
            "agent_id": ev["agent"]["agent_id"], "occurred_at": ev["occurred_at"],
            "related_event_ids": list(self.event_ids), "related_run_ids": list(self.run_ids),
            "related_partitions": list(self.partitions), "refs": list(self.spec.refs),
            "detected_at": detected_at_ms, "correlator_version": version,
            "governance_policy_version": policy_version,
        }


def _part(h: TransitionDict) -> int:
    return int(h["source_partition"])


def spans_partitions(chain: Iterable[TransitionDict]) -> bool:
    return len({_part(h) for h in chain}) > 1


def left_to_scorer(chain: Sequence[TransitionDict], ev: TransitionDict, twin: str) -> bool:
    """Whether a chain is the scorer's to report: its steps all came from one source partition, and that
    partition's scorer raised the per-run ``twin`` code on ``ev``, the event completing it (the fact's
    ``scorer_codes``). A scorer's context is capped per run, target and agent (``state.HISTORY_PER_KEY``)
    and over keys, so steps one scorer held can still have left its context before the chain completed
    (64 harmless events on the target in between are enough); the correlator, which holds every fact of
    the key, reports such a chain itself."""
    return not spans_partitions(chain) and twin in ev.get("scorer_codes", ())


def _spread(chain: Sequence[TransitionDict]) -> str:
    """Where a cross-run chain's steps came from, for its message."""
    if spans_partitions(chain):
        return f"across runs {_runs(chain)}"
    return f"runs {_runs(chain)} on one partition, whose scorer no longer held the chain"


def _where(h: TransitionDict) -> str:
    return f"{h['run_id']}#{h['step']} (p{_part(h)})"


MAX_EVIDENCE = 100
"""Most events a count-based finding (rate, stale share) names: the latest ones, ending with the event
that crossed the threshold. A busy agent's window can hold thousands; the finding must stay a small
record (its ids travel in three arrays) and its message says how many there were."""


def _named(count: int) -> str:
    """What a count-based finding's message adds when its chain of ``count`` events is cut to the latest."""
    return f"; the latest {MAX_EVIDENCE} are named" if count > MAX_EVIDENCE else ""


def _runs(chain: Sequence[TransitionDict]) -> str:
    return ", ".join(dict.fromkeys(h["run_id"] for h in chain))


CrossRunRule = Callable[[TransitionDict, CrossRunContext], list[CrossRunFinding]]
_REGISTERED: dict[str, list[CrossRunRule]] = {"target": [], "agent": []}
_PAGING: list[CrossRunRule] = []


def cross_run(code: RuleSpec, *, key: str, pages: bool = False) -> Callable[[CrossRunRule], CrossRunRule]:
    """Register a cross-run rule that emits ``code`` over facts keyed by ``key`` ("target" or "agent").

    ``pages``: the correlator also runs it on each fact as it arrives (an escalation pattern). The rule
    runs in registration order; the tuples below are built when this module has been read."""
    if CATALOGUE.get(code.code) is not code:
        raise ValueError(f"cross-run rule emits {code.code}, which is not declared with spec()")

    def register(fn: CrossRunRule) -> CrossRunRule:
        _REGISTERED[key].append(fn)
        if pages:
            _PAGING.append(fn)
        return fn

    return register


def duplicate_id_across_partitions(ev: TransitionDict, earlier: Iterable[TransitionDict]) -> TransitionDict | None:
    """The earlier event with ``ev``'s event_id that came from another partition, if any.

    Reusable on any keyed state: a redelivery of the same message (same partition) is not a duplicate."""
    for h in earlier:
        if h["event_id"] == ev["event_id"] and _part(h) != _part(ev):
            return h
    return None


XRN_DUPLICATE_ID = spec(
    "AG-XRN-006", "Duplicate event_id across partitions", S.critical, C.evidence,
    "Two events with the same event_id arrived on different partitions (so in different runs): one of "
    "them was forged or replayed into another run.",
    ("event_id", "evidence.event_hash", "run_id"),
    (PR_DS_01, ASI07),
)


@cross_run(XRN_DUPLICATE_ID, key="target")
def duplicate_id(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-006: the same event_id on two partitions of one target's facts."""
    if ev["target"]["identity_id"] != cx.key:
        return []
    first = duplicate_id_across_partitions(ev, cx.history if cx.same_id is None else cx.same_id)
    if first is None:
        return []
    same = "same" if first["evidence"]["event_hash"] == ev["evidence"]["event_hash"] else "different"
    return [CrossRunFinding(XRN_DUPLICATE_ID, cx.key,
        f"event_id {ev['event_id']!r} seen in {_where(first)} and again in {_where(ev)} with {same} content",
        (first, ev))]


def _from_per_run(per_run: Rule, code: RuleSpec, ev: TransitionDict, cx: CrossRunContext, *,
                  by_agent: bool = False) -> list[CrossRunFinding]:
    """Run a per-run escalation rule over the key's whole history (the target's, or with ``by_agent`` the
    agent's); keep the chains no scorer reported (``left_to_scorer``)."""
    if (ev["agent"]["agent_id"] if by_agent else ev["target"]["identity_id"]) != cx.key:
        return []
    ctx = (ScoringContext(policy=cx.policy, agent_history=cx.history) if by_agent
           else ScoringContext(policy=cx.policy, target_history=cx.history))
    found = per_run(ev, ctx)
    if not found:
        return []
    by_id = {h["event_id"]: h for h in cx.history}
    by_id[ev["event_id"]] = ev
    out = []
    # The fact says which codes its scorer raised, not how many chains: one chain under a code the scorer
    # raised is the scorer's; of several (an account's end closing two grants), any may be one the scorer no
    # longer held, so all are reported here: a chain found twice rather than one missed.
    alone = len(found) == 1
    for f in found:
        chain = tuple(by_id[i] for i in f.related_event_ids if i in by_id)
        if len(chain) != len(f.related_event_ids) or (alone and left_to_scorer(chain, ev, f.code)):
            continue
        out.append(CrossRunFinding(code, cx.key, f"{f.message}; {_spread(chain)}", chain))
    return out


XRN_TIER_STEPPING = spec(
    "AG-XRN-001", "Hidden escalation across runs: tier stepping", S.critical, C.escalation,
    "AG-ESC-002 over one identity's grants from different runs on different partitions, which no single "
    "scorer sees together, or on one partition further apart than its scorer's context held (that scorer "
    "raised no AG-ESC-002 on the last step). The finding names every step's event and run.",
    ESC_FIELDS, (ASI03, NHI5, PR_AA_05), pattern="tier_stepping",
)


@cross_run(XRN_TIER_STEPPING, key="target", pages=True)
def tier_stepping_across_runs(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-001: tier stepping over one identity, the steps on different partitions."""
    if not _unapproved_top_grant(ev, cx.governance):
        return []  # AG-ESC-002's own first test, before its context is built
    return _from_per_run(escalation.tier_stepping, XRN_TIER_STEPPING, ev, cx)


XRN_TRANSIENT_PRIVILEGE = spec(
    "AG-XRN-002", "Hidden escalation across runs: transient privilege", S.critical, C.escalation,
    "AG-ESC-003 with the grant and the revoke in different runs on different partitions, or on one "
    "partition further apart than its scorer's context held (that scorer raised no AG-ESC-003 on the revoke).",
    ESC_FIELDS, (ASI03, ASI10, PR_AA_05, DE_AE), pattern="transient_privilege",
)


@cross_run(XRN_TRANSIENT_PRIVILEGE, key="target", pages=True)
def transient_across_runs(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-002: a privileged grant and its revoke within the transient window, on different partitions."""
    if not _executed_revoke(ev):
        return []  # AG-ESC-003's own first test, before its context is built
    if not _granted_since(cx.history, ev["occurred_at"] - cx.governance.escalation.transient_revoke_seconds * 1000):
        return []  # no grant the revoke could end within the transient window: most revokes, no context built
    return _from_per_run(escalation.transient_privilege, XRN_TRANSIENT_PRIVILEGE, ev, cx)


def _granted_since(history: Iterable[TransitionDict], since_ms: int) -> bool:
    """Whether ``history`` holds an executed grant at or after ``since_ms``. AG-ESC-003 (run over ``history``
    alone, as ``_from_per_run`` runs it) reports only a grant it holds in force (an executed grant of
    ``history``) and ended no more than ``transient_revoke_seconds`` after it was made: without one, it finds
    nothing (``tests/unit/test_scoring_crossrun.py`` holds the two equal)."""
    return any(h["occurred_at"] >= since_ms and granted_access(h) for h in history)


def _live_edges(into: Sequence[TransitionDict], at_ms: int) -> list[TransitionDict]:
    """Edges into an agent that were granted at or before ``at_ms`` and not revoked again before it (an edge
    stamped the same millisecond as the grant it would launder counts: ties are not an order, and the chain
    is the suspicion). An access is the delegate's, not its grantor's: a revoke by anyone (a clean-up agent,
    the delegate itself) ends every edge that gave it, and a grant of it by two agents is two edges until
    then; a revoke ends the edges of the same access (:func:`~.context.same_access`, as AG-ESC-003 pairs a
    revoke with its grant). Disabling or deleting the delegate's account on a system ends every edge on that
    system (an account created again later does not bring them back)."""
    live: dict[tuple[str, str, str], tuple[TransitionDict, tuple[str, str]]] = {}
    for h in into:
        if h["occurred_at"] > at_ms:
            break
        system, names = name_key(h["resource"]["system"]), access_names(h)  # as the target compares names
        if granted_access(h):
            live[(h["agent"]["agent_id"], system, names[0])] = (h, names)
        elif h["action"] in ENTITLEMENT_REVOKES and h["occurred_at"] < at_ms:
            for k in [k for k, (_, theirs) in live.items() if k[1] == system and same_access(names, theirs)]:
                del live[k]
        elif h["action"] in ACCOUNT_REVOKES and h["occurred_at"] < at_ms:  # the delegate's account on that
            for k in [k for k in live if k[1] == system]:  # system went: every access it held there with it
                del live[k]
    return sorted((h for h, _ in live.values()), key=fact_order)


XRN_DELEGATION_LAUNDERING = spec(
    "AG-XRN-003", "Hidden escalation: delegation laundering", S.critical, C.escalation,
    "A privileged grant, with no human authority, landed on an agent upstream in the granting agent's "
    "delegation chain, or on that agent's principal: power handed down came back up. The chain is the "
    "grants to agents and service identities (as the event labels the target), into the granting agent or "
    "the principal it acts for, and through the groups they were made members of: an agent added to a group "
    "holds what the group was granted. Followed up to the policy's max_delegation_depth (a group is a hop); "
    "the finding names every hop.",
    ESC_FIELDS, (ASI07, ASI03, NHI9, PR_AA_05), pattern="delegation_laundering",
)


@cross_run(XRN_DELEGATION_LAUNDERING, key="agent", pages=True)
def delegation_laundering(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-003: a privileged grant lands on an upstream agent of the granter's delegation chain, or on
    that agent's principal. Breadth-first up the delegation graph, so the shortest chain is named."""
    if ev["agent"]["agent_id"] != cx.key or not granted_access(ev) or human_approved(ev):
        return []
    policy = cx.governance
    if not is_privileged(ev, policy):
        return []
    me, target = ev["agent"]["agent_id"], ev["target"]["identity_id"]
    if target == me:
        return []  # a self-grant: AG-ESC-004's pattern
    # Power reaches the agent through edges into itself, and into the principal it acts for (an agent acting
    # as a service identity uses that identity's access).
    frontier: list[tuple[str, tuple[TransitionDict, ...]]] = [(me, ())]
    behalf = ev["agent"]["on_behalf_of"]
    if behalf is not None and behalf not in (me, target):
        frontier.append((behalf, ()))
    visited = {a for a, _ in frontier}
    for _ in range(policy.escalation.max_delegation_depth):
        nxt: list[tuple[str, tuple[TransitionDict, ...]]] = []
        for agent, hops in frontier:
            for edge in _live_edges(cx.delegations(agent), ev["occurred_at"]):
                src, principal = edge["agent"]["agent_id"], edge["agent"]["on_behalf_of"]
                path = (edge, *hops)
                if target in (src, principal):
                    chain = (*path, ev)
                    names = " -> ".join([path[0]["agent"]["agent_id"], *(h["target"]["identity_id"] for h in path)])
                    hop_text = "; ".join(map(_hop, path))
                    whom = "itself" if target == src else f"its principal {target!r}"
                    return [CrossRunFinding(XRN_DELEGATION_LAUNDERING, cx.key,
                        f"delegation_laundering: delegation {names} ({hop_text}); then {me!r} granted privileged "
                        f"{access_name(ev)!r} to {whom} of upstream agent {src!r} ({_where(ev)}) with no human "
                        f"authority; depth {len(path)}; runs {_runs(chain)}", chain)]
                if src not in visited:
                    visited.add(src)
                    nxt.append((src, path))
                # The hop's agent acted for a principal (a service identity it runs as): the power it passed
                # on may be that principal's, handed down to it by an earlier edge. Followed as the final
                # grant's principal is, at no extra depth.
                if principal is not None and principal not in visited:
                    visited.add(principal)
                    nxt.append((principal, path))
                # A member of a group holds what the group is granted: the grants into the group are followed
                # as the member's own, the group a hop (laundering through a group; a group made a member of
                # another group is followed the same way).
                if edge["action"] == "add_group_member":
                    group = identity_key(edge["resource"]["resource_id"])
                    if group not in visited:
                        visited.add(group)
                        nxt.append((group, path))
        frontier = nxt
        if not frontier:
            break
    return []


def _hop(h: TransitionDict) -> str:
    """One hop of a delegation chain, for a finding's message."""
    if h["action"] == "add_group_member":
        return (f"{h['agent']['agent_id']!r} added {h['target']['identity_id']!r} to group "
                f"{h['resource']['resource_id']!r} ({_where(h)})")
    return f"{h['agent']['agent_id']!r} gave {h['target']['identity_id']!r} {access_name(h)!r} ({_where(h)})"


XRN_GRANT_RATE = spec(
    "AG-XRN-004", "Grant rate far above baseline across partitions", S.medium, C.drift,
    "AG-DRF-005 counted over all of the agent's grants, whichever run or partition they came from, with no "
    "per-key cap: a burst split over many runs, or one partition's burst larger than its scorer can count "
    "(that scorer raised no AG-DRF-005 on the grant that crossed the threshold).",
    ("agent.agent_id", "action", "decision.outcome", "occurred_at"),
    (ASI10, ASI08, DE_AE),
)


def rate_needed(b: AgentBaseline, policy: GovernancePolicy) -> int:
    """How many grants in the rate window (the crossing one included) AG-XRN-004 reports at."""
    d = policy.drift
    return max(d.rate_min_grants, int(d.rate_factor * b.grants_per_hour * d.rate_window_seconds / 3600) + 1)


@cross_run(XRN_GRANT_RATE, key="agent")
def grant_rate_across_partitions(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-004: the agent's grants over all partitions cross its drift threshold with this grant.

    Reported once per crossing (the grant that reaches the threshold), only when the window's grants
    come from two or more partitions (else the scorer of that one partition counts them all)."""
    b = cx.baseline
    policy = cx.governance
    d = policy.drift
    if (ev["agent"]["agent_id"] != cx.key or b is None or b.events < d.min_baseline_events
            or not granted_access(ev)):
        return []
    needed = rate_needed(b, policy)
    lo = ev["occurred_at"] - d.rate_window_seconds * 1000
    if cx.recent_grants is not None:
        if len(cx.recent_grants) + 1 != needed:
            return []
        grants = [h for h in cx.recent_grants if h["event_id"] != ev["event_id"]]
    else:
        grants = [h for h in cx.history if h["occurred_at"] >= lo and granted_access(h)
                  and h["event_id"] != ev["event_id"]]
    if len(grants) + 1 != needed:
        return []
    chain = (*grants, ev)
    if left_to_scorer(chain, ev, "AG-DRF-005"):
        return []
    per_hour = len(chain) * 3600 / d.rate_window_seconds
    parts = len({_part(h) for h in chain})
    runs = len({h["run_id"] for h in chain})
    return [CrossRunFinding(XRN_GRANT_RATE, cx.key,
        f"agent {cx.key!r} made {len(chain)} grants in {d.rate_window_seconds}s ({per_hour:.1f}/h) over "
        f"{runs} runs on {parts} partitions, more than {d.rate_factor:g}x its baseline "
        f"{b.grants_per_hour:.1f}/h{_named(len(chain))}", chain[-MAX_EVIDENCE:])]


XRN_STALE_POLICY = spec(
    "AG-XRN-009", "Policy drift across partitions: share of stale policy versions", S.medium, C.drift,
    "AG-DRF-006 counted over all of the agent's access changes in the recent window, whichever run or "
    "partition they came from: more of them than the policy's threshold ran under unapproved policy "
    "versions, while no one partition's share crossed it. Reported once per crossing.",
    ("agent.agent_id", "policy.policy_id", "policy.policy_version"),
    (ASI10, PR_AA_05, DE_CM),
)


@cross_run(XRN_STALE_POLICY, key="agent")
def stale_policy_across_partitions(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-009: the agent's share of decisions under unapproved policy versions, over every partition's
    facts in the drift window, crosses the threshold with this (stale) decision.

    Once per crossing: the window without this decision was at or under the threshold. Only when the
    partition this decision came from does not cross it on its own (else its scorer raises AG-DRF-006)."""
    policy = cx.governance
    b = cx.baseline
    if (ev["agent"]["agent_id"] != cx.key or b is None or b.events < policy.drift.min_baseline_events
            or not stale_decision(policy, ev)):
        return []
    w = cx.decision_window if cx.decision_window is not None else _decision_window(ev, cx)
    if not stale_share_over(w.stale + 1, w.decisions + 1, policy) or stale_share_over(w.stale, w.decisions, policy):
        return []
    if stale_share_over(w.own_stale + 1, w.own_decisions + 1, policy):
        return []  # the scorer of this partition sees the drift by itself
    count = w.stale + 1
    parts = len(w.stale_partitions | {_part(ev)})
    share = count / (w.decisions + 1)
    ref = ev["policy"]
    return [CrossRunFinding(XRN_STALE_POLICY, cx.key,
        f"agent {cx.key!r}: {count} of its last {w.decisions + 1} access changes ({share:.0%}) ran under "
        f"unapproved policy versions, over {parts} partitions, now {ref['policy_id']!r} {ref['policy_version']!r} "
        f"(threshold {policy.drift.stale_policy_share:.0%}, baseline {b.stale_policy_share:.0%}){_named(count)}",
        (*w.latest_stale, ev)[-MAX_EVIDENCE:])]


def _decision_window(ev: TransitionDict, cx: CrossRunContext) -> DecisionWindow:
    """AG-XRN-009's counts by scanning ``history`` over the drift window (what ``decision_window`` indexes)."""
    policy = cx.governance
    lo = ev["occurred_at"] - policy.drift.rate_window_seconds * 1000
    window = [h for h in cx.history if h["occurred_at"] >= lo and h["event_id"] != ev["event_id"]]
    stale = [h for h in window if stale_decision(policy, h)]
    mine = [h for h in window if _part(h) == _part(ev)]
    return DecisionWindow(len(window), len(stale), len(mine), sum(1 for h in mine if stale_decision(policy, h)),
                          frozenset(_part(h) for h in stale), stale[-MAX_EVIDENCE:])


XRN_GROUP_NESTING = spec(
    "AG-XRN-008", "Hidden escalation across runs: group nesting", S.critical, C.escalation,
    "AG-ESC-001 over one agent's steps from different runs on different partitions: a group created in one "
    "run, a principal added to it in another, the group granted privilege in a third, with no human "
    "authority; or on one partition further apart than its scorer's context held (no AG-ESC-001 from that "
    "scorer). The finding names every step's event and run.",
    ESC_FIELDS, (ASI03, NHI5, PR_AA_05), pattern="group_nesting",
)


@cross_run(XRN_GROUP_NESTING, key="agent", pages=True)
def group_nesting_across_runs(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-008: one agent creates a group, adds a principal to it and grants it privilege, the steps on
    different partitions (the by-agent facts carry ``create_group``, :data:`pipeline.facts.FACT_ACTIONS`)."""
    return _from_per_run(escalation.group_nesting, XRN_GROUP_NESTING, ev, cx, by_agent=True)


XRN_TOXIC_PAIR = spec(
    "AG-XRN-005", "Separation-of-duties toxic pair against holdings", S.high, C.risk,
    "AG-SOD-001 against everything the identity holds, however long ago it was granted (holdings topic), "
    "when the first half came from another partition, is older than a scorer's context, or left that "
    "scorer's context (capped per key) before the second half came (the scorer raised no AG-SOD-001).",
    ("target.identity_id", "resource.entitlement", "resource.resource_id"),
    (PR_AA_05, ASI03, NHI5),
)


def _executed_before(ev: TransitionDict, cx: CrossRunContext) -> list[TransitionDict]:
    """The target's executed changes before ``ev``, from holdings (one record per target, system and access: the
    latest change, any age) and the window's history merged in event-time order: a later change counts only
    after the one it follows, whichever source each came from (read one after the other, a revoke from holdings
    was passed over when its grant came back from the history, and a revoked first half counted as held). An
    event id counts once (its first copy: a later copy is AG-XRN-006's, never a holding)."""
    before = fact_order(ev)
    merged: dict[str, TransitionDict] = {}
    for h in (*cx.holdings, *cx.history):
        o = fact_order(h)
        if o >= before or h["decision"]["outcome"] != "granted" or h["event_id"] == ev["event_id"]:
            continue
        kept = merged.get(h["event_id"])
        if kept is None or o < fact_order(kept):
            merged[h["event_id"]] = h
    return sorted(merged.values(), key=fact_order)


def _held_before(ev: TransitionDict, cx: CrossRunContext) -> InForce[TransitionDict]:
    """What the target held just before ``ev``: the grants still in force, scoped by system (as ``name_key``
    folds it), replayed from :func:`_executed_before`. An access is per system: revoking an entitlement of the
    same name on another system leaves this one held. A revoke ends every grant of its system that is the same
    access (:func:`~.context.same_access`), as AG-ESC-003 and the scorer's AG-SOD-001 pair them."""
    held: InForce[TransitionDict] = InForce()
    for h in _executed_before(ev, cx):
        if granted_access(h):
            held.grant(name_key(h["resource"]["system"]), access_names(h), h)
        elif h["action"] in ENTITLEMENT_REVOKES:
            held.revoke(name_key(h["resource"]["system"]), access_names(h))
        elif h["action"] == "delete_account":
            held.end_scope(name_key(h["resource"]["system"]))
    return held


@cross_run(XRN_TOXIC_PAIR, key="target")
def toxic_pair_against_holdings(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-005: the grant completes a toxic pair with access the target holds, however old. Both names of
    the grant and of each held grant count (:func:`sod_partners_of`), as for AG-SOD-001."""
    if ev["target"]["identity_id"] != cx.key or not granted_access(ev):
        return []
    partners = sod_partners_of(ev, cx.governance)
    if not partners:
        return []
    held = _held_before(ev, cx)
    if held.holds(access_names(ev)):
        return []  # already held (on some system): the pair, if any, was completed earlier
    name = access_name(ev)
    out = []
    for partner, pair in partners:  # names compare as the policy's pairs do: name_key
        first = min(held.naming(name_key(partner)), key=fact_order, default=None)
        if first is None:
            continue
        age_ms = ev["occurred_at"] - first["occurred_at"]
        chain = (first, ev)
        if age_ms <= cx.scorer_window_ms and left_to_scorer(chain, ev, "AG-SOD-001"):
            continue  # the scorer of this partition saw both halves and said so
        out.append(CrossRunFinding(XRN_TOXIC_PAIR, cx.key,
            f"{cx.key!r} granted {name!r} ({_where(ev)}) while holding {partner!r}, granted "
            f"{age_ms / 86_400_000:.1f} days earlier ({_where(first)}): toxic pair {pair!r}", chain))
    return out


XRN_GRANT_TO_LEAVER = spec(
    "AG-XRN-007", "Access granted to an identity the log shows has left", S.high, C.risk,
    "Access was granted on a system while the event called the identity anything but terminated or pre-hire "
    "(active, on leave, unknown), yet the identity's account on "
    "that system, or on one of the policy's identity providers (identity_providers: that account going means "
    "the person left everywhere), was disabled or deleted (an executed disable_account or delete_account, "
    "however long ago, from the holdings topic) and not re-created since: the agent's own lifecycle claim "
    "contradicts the log. A create_account re-creates its own system's account, and every application's (not "
    "another identity provider's) when it is an identity provider's; one on another system while an identity "
    "provider's account is gone is itself such a grant.",
    ("target.identity_id", "target.lifecycle_state", "resource.system", "action"),
    (NHI1, PR_AA_05, ASI03),
)


def _accounts_ended(ev: TransitionDict, cx: CrossRunContext) -> dict[str, TransitionDict]:
    """The target's accounts that were ended just before ``ev``: system (as ``name_key`` folds it) -> the
    executed account event that ended it, replayed from :func:`_executed_before` so that a rebuild from the
    compacted holdings (the latest creation and ending per system) decides as live judging did.

    Accounts are per system: an identity's account on one system ending says nothing of its others, and a
    creation re-creates that system's account only (a create_account on a throwaway system must not bring a
    leaver back). Only an identity provider's creation re-creates the applications' accounts too: the person
    is back in the directory, and the accounts downstream of it follow. Not another identity provider's: with
    two directories, the one still ended still says the person left."""
    policy = cx.governance
    ended: dict[str, TransitionDict] = {}
    for h in _executed_before(ev, cx):
        action, system = h["action"], h["resource"]["system"]
        if action in ACCOUNT_REVOKES:  # deleting an account ends it no less than disabling it
            ended[name_key(system)] = h
        elif action == "create_account":
            ended.pop(name_key(system), None)
            if policy.identity_provider(system):
                ended = {k: e for k, e in ended.items() if policy.identity_provider(e["resource"]["system"])}
    return ended


def lifecycle_rule_speaks(ev: TransitionDict, policy: GovernancePolicy) -> bool:
    """Whether AG-LCM-001 judges ``ev``: its own lifecycle state blocks its action (the policy's
    ``lifecycle.blocked_states``, as its defaults say: a fact carries no workflow). AG-XRN-007 then leaves the
    grant to that rule. Until session 26 it left every ``terminated`` or ``pre_hire`` grant to it, but
    ``pre_hire`` still allows ``create_account``: a leaver's application account created by an agent calling
    the person pre-hire drew no finding from either rule (red team, session 26)."""
    allowed = policy.boundary_for("").blocked_states.get(ev["target"]["lifecycle_state"])  # "": the defaults
    return allowed is not None and ev["action"] not in allowed


@cross_run(XRN_GRANT_TO_LEAVER, key="target")
def grant_to_leaver(ev: TransitionDict, cx: CrossRunContext) -> list[CrossRunFinding]:
    """AG-XRN-007: a grant to an identity whose account on the grant's system, or on an identity provider, an
    earlier executed disable_account or delete_account (any age) left ended, unless the event's own lifecycle
    state blocks it and AG-LCM-001 speaks (:func:`lifecycle_rule_speaks`; an agent that says ``unknown`` or
    ``on_leave`` of a leaver, or ``pre_hire`` of one whose account it creates, is no less contradicted by the
    log). A
    create_account is judged by the other systems' identity providers only: on its own system it is the
    re-creation, not a grant to a leaver."""
    if (ev["target"]["identity_id"] != cx.key or not granted_access(ev)
            or lifecycle_rule_speaks(ev, cx.governance)):
        return []
    ended = _accounts_ended(ev, cx)
    if not ended:
        return []
    system = name_key(ev["resource"]["system"])
    creates = ev["action"] == "create_account"
    last = None if creates else ended.get(system)
    where = f"{ev['resource']['system']!r} account"
    if last is None:  # the person left: an identity provider's account is gone
        gone = [e for k, e in ended.items() if k != system and cx.governance.identity_provider(e["resource"]["system"])]
        if not gone:
            return []
        last = max(gone, key=fact_order)
        where = f"account on identity provider {last['resource']['system']!r}"
    days = (ev["occurred_at"] - last["occurred_at"]) / 86_400_000
    how = {"disable_account": "disabled", "delete_account": "deleted"}[last["action"]]
    return [CrossRunFinding(XRN_GRANT_TO_LEAVER, cx.key,
        f"{ev['action']} of {access_name(ev)!r} on {ev['resource']['system']!r} to {cx.key!r} ({_where(ev)}), "
        f"called {ev['target']['lifecycle_state']}, whose {where} was {how} {days:.1f} days earlier "
        f"({_where(last)}) and not re-created since",
        (last, ev))]


BY_TARGET_RULES: tuple[CrossRunRule, ...] = tuple(_REGISTERED["target"])
BY_AGENT_RULES: tuple[CrossRunRule, ...] = tuple(_REGISTERED["agent"])
# The rules whose chains page (an escalation pattern). The correlator also runs these on each fact as it
# arrives, over the facts arrived so far, so the page does not wait for the grace; every rule's finding
# is published at the watermark (docs/guarantees.md, "Early pages").
PAGING_BY_TARGET: tuple[CrossRunRule, ...] = tuple(r for r in BY_TARGET_RULES if r in _PAGING)
PAGING_BY_AGENT: tuple[CrossRunRule, ...] = tuple(r for r in BY_AGENT_RULES if r in _PAGING)


# The entry test of each paging rule: what the fact itself must be for the rule to complete a chain on it,
# checked before any history is read. The correlator judges every arriving fact by the paging rules, and
# most facts (a benign grant, an approved step) can complete none: ``may_page`` lets it skip building
# their context. Each test is the first check of its rule, nothing more (tests/unit/test_scoring_crossrun.py
# proves a fact failing it gets no finding from the rule, whatever its history).
def _executed_revoke(ev: TransitionDict) -> bool:
    """Transient privilege: the executed revoke completes it."""
    return ev["action"] in REVOKES and ev["decision"]["outcome"] == "granted"


def _unapproved_top_grant(ev: TransitionDict, policy: GovernancePolicy) -> bool:
    """Tier stepping: the executed grant at the privileged tier, with no human authority, completes it."""
    return granted_access(ev) and tier_of(ev, policy) >= policy.privileged.min_tier and not human_approved(ev)


def _executed_revoke_or_unapproved_top_grant(ev: TransitionDict, policy: GovernancePolicy) -> bool:
    return _executed_revoke(ev) or _unapproved_top_grant(ev, policy)


_ENTRY: dict[CrossRunRule, Callable[[TransitionDict, GovernancePolicy], bool]] = {
    tier_stepping_across_runs: _executed_revoke_or_unapproved_top_grant,
    transient_across_runs: _executed_revoke_or_unapproved_top_grant,
    delegation_laundering: lambda ev, policy: (granted_access(ev) and not human_approved(ev)
                                               and ev["target"]["identity_id"] != ev["agent"]["agent_id"]
                                               and is_privileged(ev, policy)),
    group_nesting_across_runs: lambda ev, policy: (ev["action"] in ENTITLEMENT_GRANTS and granted_access(ev)
                                                   and not human_approved(ev)),
}
if set(_ENTRY) != set(_PAGING):  # a new paging rule needs its entry test
    raise RuntimeError(f"paging rules without an entry test: {set(_PAGING) - set(_ENTRY)}")


EntryTest = Callable[[TransitionDict, GovernancePolicy], bool]


@functools.cache
def entry_test(rules: tuple[CrossRunRule, ...]) -> EntryTest:
    """One test for the paging ``rules``: whether any of them can complete a chain on a fact (each distinct
    entry test once: tier stepping and transient privilege share one)."""
    entries = tuple(dict.fromkeys(_ENTRY[r] for r in rules))
    if len(entries) == 1:
        return entries[0]
    if len(entries) == 2:  # by agent: laundering, group nesting (a call per fact: no generator)
        first, second = entries
        return lambda ev, policy: first(ev, policy) or second(ev, policy)
    return lambda ev, policy: any(entry(ev, policy) for entry in entries)


def may_page(ev: TransitionDict, policy: GovernancePolicy, rules: tuple[CrossRunRule, ...]) -> bool:
    """Whether any of the paging ``rules`` can complete a chain on ``ev`` (their entry tests): when False,
    ``correlate(ev, cx, rules)`` finds nothing, whatever ``cx`` holds."""
    return entry_test(rules)(ev, policy)


# The entry tests of the by-target rules at the watermark, where every fact is judged by all of them: most
# facts (a benign grant of access in no toxic pair, to an identity none of whose accounts ever ended) can
# complete no chain, and ``may_find_by_target`` lets the correlator skip building their context. Like
# ``_ENTRY``, each test is its rule's first check and nothing more, with two facts of the state the rules
# would read:
# ``copies`` (the key holds an earlier fact with ``ev``'s event_id: ``cx.same_id`` is not empty) and ``left``
# (an executed ``disable_account`` or ``delete_account`` of the target was held, any age, on any system:
# ``KeyedState.accounts_ended``).
def may_find_by_target(ev: TransitionDict, policy: GovernancePolicy, *, copies: bool, left: bool) -> bool:
    """Whether any by-target rule can find a chain completed by ``ev``: when False, ``correlate(ev, cx,
    BY_TARGET_RULES)`` finds nothing for a ``cx`` whose ``same_id`` is empty (unless ``copies``) and whose
    holdings and history hold no executed ``disable_account`` or ``delete_account`` (unless ``left``)."""
    if copies:
        return True  # AG-XRN-006, and a later copy is judged by it alone
    if _executed_revoke_or_unapproved_top_grant(ev, policy):
        return True  # tier stepping, transient privilege
    if not granted_access(ev):
        return False  # the SoD and leaver rules judge executed grants only
    if sod_partners_of(ev, policy):
        return True  # toxic pair against holdings
    return left and not lifecycle_rule_speaks(ev, policy)


_GATED_BY_TARGET = {duplicate_id, tier_stepping_across_runs, transient_across_runs, toxic_pair_against_holdings,
                    grant_to_leaver}
if set(BY_TARGET_RULES) != _GATED_BY_TARGET:  # a new by-target rule needs its entry test in may_find_by_target
    raise RuntimeError(f"by-target rules without an entry test: {set(BY_TARGET_RULES) - _GATED_BY_TARGET}")


# The entry test of the by-agent rules at the watermark, for an executed grant (the correlator judges any other
# by-agent fact by the stale-share rule alone, and only when stale): each rule's first checks, with what the
# correlator indexed for them: ``nesting`` (a group the grant may act on was created before it in the window:
# ``KeyedState.created_before``), ``stale`` (``stale_decision``), and ``recent_grants`` (how many executed
# grants of the agent are in the rate window before it: ``cx.recent_grants``).
def may_find_by_agent(ev: TransitionDict, policy: GovernancePolicy, baseline: AgentBaseline | None, *,
                      recent_grants: int, stale: bool, nesting: bool) -> bool:
    """Whether any by-agent rule can find a chain completed by the executed grant ``ev``: when False,
    ``correlate(ev, cx, rules)`` finds nothing for a ``cx`` of that ``baseline`` and ``recent_grants``, with
    group nesting among the ``rules`` only if ``nesting``."""
    if nesting or _ENTRY[delegation_laundering](ev, policy):
        return True  # group nesting, delegation laundering
    if baseline is None or baseline.events < policy.drift.min_baseline_events:
        return False  # the counting rules need a warm baseline
    return stale or recent_grants + 1 == rate_needed(baseline, policy)  # stale share, grant rate


_GATED_BY_AGENT = {delegation_laundering, grant_rate_across_partitions, stale_policy_across_partitions,
                   group_nesting_across_runs}
if set(BY_AGENT_RULES) != _GATED_BY_AGENT:  # a new by-agent rule needs its entry test in may_find_by_agent
    raise RuntimeError(f"by-agent rules without an entry test: {set(BY_AGENT_RULES) - _GATED_BY_AGENT}")


def later_copy(ev: TransitionDict, cx: CrossRunContext) -> bool:
    """The fact of a later copy of an event_id the key's facts already hold from another partition (a replay
    or a rewritten copy under another Kafka key). It raises AG-XRN-006 and nothing else: its grant is not a
    new grant (the writer keeps the copy apart; first copy wins)."""
    if ev["target"]["identity_id"] != cx.key:
        return False
    return duplicate_id_across_partitions(ev, cx.history if cx.same_id is None else cx.same_id) is not None


def correlate(ev: TransitionDict, cx: CrossRunContext, rules: Iterable[CrossRunRule]) -> list[CrossRunFinding]:
    out: list[CrossRunFinding] = []
    if later_copy(ev, cx):
        rules = [r for r in rules if r is duplicate_id]
    for rule in rules:
        out.extend(rule(ev, cx))
    return out
