"""What a rule may know beyond the event itself. Built by the consumer, read-only to rules.

Everything here is derived from the log (a replay of the partition's recent past) or from the store,
never from one replica's private memory, so any replica computes the same context for the same event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ..events import ENTITLEMENT_GRANTS, ENTITLEMENT_REVOKES, TransitionDict, name_key
from .policy import GovernancePolicy, LoadedPolicy


@dataclass(frozen=True, slots=True)
class AgentBaseline:
    """An agent's observed behaviour over the baseline window, from the store."""

    agent_id: str
    events: int
    actions: frozenset[str] = frozenset()
    systems: frozenset[str] = frozenset()
    entitlements: frozenset[str] = frozenset()
    inputs: frozenset[str] = frozenset()
    max_tier: int = 0
    grants_per_hour: float = 0.0
    stale_policy_share: float = 0.0
    as_of_ms: int = 0


@dataclass(frozen=True, slots=True)
class ScoringContext:
    """Read-only inputs of the rules for one event."""

    policy: LoadedPolicy
    run_history: Sequence[TransitionDict] = ()
    """Earlier events of the same run (chain checks AG-EVD-003/004, escalation within a run)."""
    target_history: Sequence[TransitionDict] = ()
    """Earlier events on the same target identity (any run), oldest first. Escalation and SoD read it;
    it must reach back at least ``escalation.window_seconds`` of event time."""
    agent_history: Sequence[TransitionDict] = ()
    """Earlier events by the same agent, oldest first. Escalation across runs and drift rates read it; it
    must reach back at least max(``escalation.window_seconds``, ``drift.rate_window_seconds``)."""
    target_entitlements: frozenset[str] = frozenset()
    """Entitlements/roles/groups the target holds before this event, as derived from the log or store
    (see :func:`entitlements_from_history`). AG-SOD-001 replays ``target_history`` over it."""
    baseline: AgentBaseline | None = None
    """The agent's baseline over ``drift.baseline_window_seconds``; None (or warm-up) turns drift off."""
    seen_event_hashes: Mapping[str, str] = field(default_factory=dict)
    """event_id -> event_hash of events already seen (duplicate-id tamper detection, exact replays)."""
    signing_keys: Mapping[str, bytes] = field(default_factory=dict)
    """key_id -> HMAC key. A present signature is verified whenever its key is known."""
    require_signatures: bool = False
    """Unsigned events, and events signed with an unknown key, raise AG-EVD-006."""
    key_agents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """key_id -> agent_id patterns (fnmatch) the key may sign for. Empty: no binding is checked; otherwise a
    verified signature by a key not registered for the event's agent raises AG-EVD-007."""
    runs_complete: bool = False
    """The context holds every run of the partition active over the last ``context_window_seconds`` (or
    since the log's start): a run first seen at step > 0 then raises AG-EVD-003. False (unknown: just
    after a partial replay, or after runs were evicted by the size caps) keeps the rule silent."""

    @property
    def governance(self) -> GovernancePolicy:
        """The governance policy the rules apply (``policy`` is the loaded file: policy, version, hash)."""
        return self.policy.governance


def access_name(ev: TransitionDict) -> str:
    """The entitlement an event grants or revokes: the entitlement, else the resource (role, group)."""
    res = ev["resource"]
    return res["entitlement"] or res["resource_id"]


AccessNames = tuple[str, str]
"""An access as :func:`access_names` names it: its access name and its resource id, folded by ``name_key``."""


def access_names(ev: TransitionDict) -> AccessNames:
    """Both names of the access an event grants or revokes, as ``name_key`` folds them: its access name
    (:func:`access_name`) and its resource id (the same when there is no entitlement). Fold once per event and
    compare the pairs with :func:`same_access`."""
    res = ev["resource"]
    rid = name_key(res["resource_id"])
    ent = res["entitlement"]
    return (name_key(ent) if ent else rid, rid)


def same_access(a: AccessNames, b: AccessNames) -> bool:
    """Whether two events name the same access on a system, as the directory pairs a revoke with a grant: the
    access name of either is one of the other's two names. A role granted as ``resource_id=role/GlobalAdmin,
    entitlement="Global Administrator"`` is revoked by ``remove_role role/GlobalAdmin`` with no entitlement
    (the role is gone in the directory), and the other way round. Two entitlements that share only their
    resource id are not one access: the resource is then the application that holds both (``sap-fi`` holding
    ``ap-create-vendor`` and ``ap-approve-payment``), and revoking one leaves the other. Symmetric."""
    return a[0] == b[0] or a[0] == b[1] or b[0] == a[1]


V = TypeVar("V")


class InForce(Generic[V]):
    """Grants in force, each under a scope (a system as ``name_key`` folds it, or None for access known by
    name only: ``ScoringContext.target_entitlements``) and its :func:`access_names`, where a revoke ends every
    grant of its scope that is the same access (:func:`same_access`) and a grant replaces only an earlier one
    of the same scope and access name. Indexed by both names, so a revoke or a look-up costs a few dict
    probes, not a scan of the holdings (the correlator replays a target's holdings of any age per judgement).
    """

    __slots__ = ("grants", "named")

    def __init__(self) -> None:
        self.grants: dict[tuple[str | None, str], tuple[V, AccessNames]] = {}
        """(scope, access name) -> (the grant's value, its names)."""
        self.named: dict[str, set[tuple[str | None, str]]] = {}
        """Either name of a grant -> the keys of ``grants`` it names."""

    def grant(self, scope: str | None, names: AccessNames, value: V) -> None:
        key = (scope, names[0])
        if key in self.grants:
            self._drop(key)  # the latest grant of an access name is the one in force
        self.grants[key] = (value, names)
        for n in {names[0], names[1]}:
            self.named.setdefault(n, set()).add(key)

    def revoke(self, scope: str | None, names: AccessNames) -> list[V]:
        """End (and return) the grants of ``scope`` that are the access ``names`` revokes."""
        hits = {k for k in self.named.get(names[0], ()) if k[0] == scope}  # its access name is one of theirs
        if (scope, names[1]) in self.grants:  # theirs is its resource id
            hits.add((scope, names[1]))
        return [self._drop(k) for k in sorted(hits, key=lambda k: k[1])]

    def end_scope(self, scope: str | None) -> None:
        """End every grant of ``scope`` (the account on that system went)."""
        for key in [k for k in self.grants if k[0] == scope]:
            self._drop(key)

    def holds(self, names: AccessNames) -> bool:
        """Whether a grant of the same access (:func:`same_access`) is in force, in any scope."""
        return bool(self.named.get(names[0])) or any(k[1] == names[1] for k in self.named.get(names[1], ()))

    def naming(self, name: str) -> list[V]:
        """The grants in force, in any scope, one of whose two names is ``name`` (folded by ``name_key``)."""
        return [self.grants[k][0] for k in self.named.get(name, ())]

    def items(self) -> list[tuple[V, AccessNames]]:
        return list(self.grants.values())

    def __len__(self) -> int:
        return len(self.grants)

    def _drop(self, key: tuple[str | None, str]) -> V:
        value, names = self.grants.pop(key)
        for n in {names[0], names[1]}:
            keys = self.named[n]
            keys.discard(key)
            if not keys:
                del self.named[n]
        return value


def holdings_from_history(
    events: Iterable[TransitionDict], initial: Iterable[str] = ()
) -> InForce[TransitionDict | str]:
    """What an identity holds after ``events`` (its own, oldest first), starting from ``initial``: the grants
    in force, each with both its names (:func:`entitlements_from_history` says which; the value is the grant,
    or the name as given for a name of ``initial``)."""
    held: InForce[TransitionDict | str] = InForce()
    for n in initial:
        k = name_key(n)
        held.grant(None, (k, k), n)  # known by name only: a revoke of that name, or of that resource, ends it
    for ev in events:
        if ev["decision"]["outcome"] != "granted":
            continue
        action = ev["action"]
        if action in ENTITLEMENT_GRANTS:
            held.grant(name_key(ev["resource"]["system"]), access_names(ev), ev)
        elif action in ENTITLEMENT_REVOKES:
            names = access_names(ev)
            held.revoke(name_key(ev["resource"]["system"]), names)
            held.revoke(None, names)
        elif action == "delete_account":
            held.end_scope(name_key(ev["resource"]["system"]))
    return held


def entitlements_from_history(
    events: Iterable[TransitionDict], initial: Iterable[str] = ()
) -> frozenset[str]:
    """What an identity holds after ``events`` (its own, oldest first), starting from ``initial``.

    Only executed changes count (``decision.outcome == "granted"``). An entitlement is named by
    ``resource.entitlement``, or by ``resource.resource_id`` (role, group) when there is none; the same
    naming :mod:`sod` and the policy's toxic pairs use. A revoke ends the grants on its system that are the same
    access (:func:`same_access`: a revoke naming a role by its resource id ends its grant labelled with an
    entitlement, and the other way round); ``delete_account`` drops everything held on that system. Names and
    systems compare as the policy's toxic pairs and the correlator's holdings do (``name_key``): a revoke spelt
    in another case ends the grant, a revoke on another system does not. Replaying events the ``initial`` set
    already reflects changes nothing, so the consumer may pass a set derived from the store plus the recent
    log. Pure; O(len(events)).

    Example::

        ctx = ScoringContext(policy, target_history=hist,
                             target_entitlements=entitlements_from_history(hist))
    """
    held = holdings_from_history(events, initial)
    return frozenset(v if isinstance(v, str) else access_name(v) for v, _ in held.items())
