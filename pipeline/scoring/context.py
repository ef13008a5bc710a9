"""What a rule may know beyond the event itself. Built by the consumer, read-only to rules.

Everything here is derived from the log (a replay of the partition's recent past) or from the store,
never from one replica's private memory, so any replica computes the same context for the same event.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..events import TransitionDict
from .policy import LoadedPolicy


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
    """Earlier events of the same run, in step order, within the context window."""
    target_history: Sequence[TransitionDict] = ()
    """Earlier events on the same target identity (any run) within the window, oldest first."""
    agent_history: Sequence[TransitionDict] = ()
    """Earlier events by the same agent within the window, oldest first."""
    target_entitlements: frozenset[str] = frozenset()
    """Entitlements/roles/groups the target holds before this event, as derived from the log or store."""
    baseline: AgentBaseline | None = None
    seen_event_hashes: Mapping[str, str] = field(default_factory=dict)
    """event_id -> event_hash of events already seen (duplicate-id tamper detection)."""
    signing_keys: Mapping[str, bytes] = field(default_factory=dict)
    require_signatures: bool = False
