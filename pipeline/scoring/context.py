"""What a rule may know beyond the event itself. Built by the consumer, read-only to rules.

Everything here is derived from the log (a replay of the partition's recent past) or from the store,
never from one replica's private memory, so any replica computes the same context for the same event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

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


def entitlements_from_history(
    events: Iterable[TransitionDict], initial: Iterable[str] = ()
) -> frozenset[str]:
    """What an identity holds after ``events`` (its own, oldest first), starting from ``initial``.

    Only executed changes count (``decision.outcome == "granted"``). An entitlement is named by
    ``resource.entitlement``, or by ``resource.resource_id`` (role, group) when there is none; the same
    naming :mod:`sod` and the policy's toxic pairs use. ``delete_account`` drops everything held on that
    system. Replaying events the ``initial`` set already reflects changes nothing, so the consumer may
    pass a set derived from the store plus the recent log. Pure; O(len(events)).

    Example::

        ctx = ScoringContext(policy, target_history=hist,
                             target_entitlements=entitlements_from_history(hist))
    """
    # (name, system) as name_key folds them -> the name as granted; a system of None: known from ``initial``,
    # not where. Names and systems compare as the policy's toxic pairs and the correlator's holdings do: a
    # revoke spelt in another case ends the grant, a revoke on another system does not.
    held: dict[tuple[str, str | None], str] = {(name_key(n), None): n for n in initial}
    for ev in events:
        if ev["decision"]["outcome"] != "granted":
            continue
        action = ev["action"]
        if action in ENTITLEMENT_GRANTS:
            name = access_name(ev)
            held[(name_key(name), name_key(ev["resource"]["system"]))] = name
        elif action in ENTITLEMENT_REVOKES:
            name = name_key(access_name(ev))
            held.pop((name, name_key(ev["resource"]["system"])), None)
            held.pop((name, None), None)
        elif action == "delete_account":
            system = name_key(ev["resource"]["system"])
            held = {k: n for k, n in held.items() if k[1] != system}
    return frozenset(held.values())
