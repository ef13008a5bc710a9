"""Access facts: the scorer's repartitioning of access-changing events by entity.

The scorer emits one compact :data:`FACT` record (``schemas/access_fact.avsc``) per access-changing
event, in the same Kafka transaction as its assessment, to:

- ``agentgov.facts.by-target.v1``, keyed and partitioned by target identity (tier stepping, transient
  privilege, separation of duties, duplicate event ids);
- ``agentgov.facts.by-agent.v1``, keyed and partitioned by agent (grant rates, delegation laundering);
- ``agentgov.holdings.v1``, compacted, keyed by target + system + access (:func:`holding_key`) and
  **co-partitioned** with by-target, so a correlator owning by-target partition *p* reads holdings
  partition *p* whole: what every identity holds, whatever its age;
- ``agentgov.delegations.v1``, compacted, one partition: agent-to-agent grants, read whole by every
  correlator (the delegation graph, GlobalKTable-style).

Partitions are chosen explicitly as ``crc32(key) mod facts_partitions`` (:func:`partition_for`), so the
mapping is the same in every client library and co-partitioning holds by construction.

Example::

    emitter = FactEmitter(settings, serde)
    emitter.emit(producer.produce, ev, partition, offset)       # inside the scorer's transaction
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError
from .events import GRANTS, REVOKES, Action, TransitionDict, identity_key, identity_pattern
from .serde import Serde
from .settings import Settings

log = logging.getLogger(__name__)

FACT = "access_fact"
FINDING = "cross_run_finding"
ACCESS_ACTIONS = frozenset(GRANTS | REVOKES)
FACT_ACTIONS = frozenset(ACCESS_ACTIONS | {Action.create_group})
"""What the scorers emit facts for: every access change, and group creation (by agent only: the first step
of group nesting, AG-XRN-008, which changes no one's access by itself)."""

Fact = dict[str, Any]


def partition_for(key: str, partitions: int) -> int:
    """The partition of an entity key on every entity-keyed topic."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def is_access_change(ev: TransitionDict) -> bool:
    return ev["action"] in ACCESS_ACTIONS


def fact_from_event(ev: TransitionDict, partition: int, offset: int, codes: Sequence[str] = ()) -> Fact:
    """The fact of ``ev``; ``codes`` are the finding codes the scorer raised on it (sorted and distinct)."""
    agent, target, res, dec = ev["agent"], ev["target"], ev["resource"], ev["decision"]
    return {
        "event_id": ev["event_id"], "occurred_at": ev["occurred_at"], "run_id": ev["run_id"], "step": ev["step"],
        "agent_id": agent["agent_id"], "on_behalf_of": agent["on_behalf_of"],
        "target_id": target["identity_id"], "target_type": str(target["identity_type"]),
        "lifecycle_state": str(target["lifecycle_state"]), "action": str(ev["action"]),
        "system": res["system"], "resource_id": res["resource_id"], "entitlement": res["entitlement"],
        "privilege_tier": res["privilege_tier"], "outcome": str(dec["outcome"]), "authority": str(dec["authority"]),
        "approved_by": dec["approved_by"], "policy_id": ev["policy"]["policy_id"],
        "policy_version": ev["policy"]["policy_version"], "event_hash": ev["evidence"]["event_hash"],
        "source_partition": partition, "source_offset": offset, "scorer_codes": list(codes),
    }


_VARINT_1 = tuple(bytes([n << 1]) for n in range(64))
"""The zigzag varints of 0..63, one byte each (lengths, tiers, steps, partitions)."""
_NULL, _SOME = b"\x00", b"\x02"  # union ["null", "string"]: branch 0, branch 1


def _long(n: int) -> bytes:
    """Avro int/long: zigzag, then base-128 varint (least significant group first)."""
    if 0 <= n < 64:
        return _VARINT_1[n]
    if not -(1 << 63) <= n < 1 << 63:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def _str(value: str) -> bytes:
    raw = value.encode()
    n = len(raw)
    return (_VARINT_1[n] if n < 64 else _long(n)) + raw


def _opt(value: str | None) -> bytes:
    return _NULL if value is None else _SOME + _str(value)


def _strings(values: Sequence[str]) -> bytes:
    """Avro array of strings: one block of ``len(values)`` items, then the empty block that ends it."""
    if not values:
        return _NULL
    return b"".join((_long(len(values)), *map(_str, values), _NULL))


WRITTEN_FIELDS = ("event_id", "occurred_at", "run_id", "step", "agent_id", "on_behalf_of", "target_id",
                  "target_type", "lifecycle_state", "action", "system", "resource_id", "entitlement",
                  "privilege_tier", "outcome", "authority", "approved_by", "policy_id", "policy_version",
                  "event_hash", "source_partition", "source_offset", "scorer_codes")
"""The fact schema's fields in the order :func:`write_fact` writes them (``FactEmitter`` checks the current
schema against it, and encodes with fastavro when they differ)."""


def write_fact(ev: TransitionDict, partition: int, offset: int, codes: Sequence[str] = ()) -> bytes:
    """The Avro datum of ``fact_from_event(ev, partition, offset, codes)`` written with the current fact schema,
    straight from the event: fastavro's generic writer and the intermediate dict cost a scorer about 10 µs
    of its ~100 µs per access change, this about 5. The event is the scorer's decoded record (strings, ints,
    timestamp in ms); anything else raises TypeError or AttributeError, and the emitter falls back to
    fastavro, whose answer (or error) stands. ``tests/unit/test_fact_emitter.py`` holds the bytes equal."""
    agent, target, res, dec, pol = ev["agent"], ev["target"], ev["resource"], ev["decision"], ev["policy"]
    if type(ev["occurred_at"]) is not int:
        raise TypeError("occurred_at is not in ms")
    return b"".join((
        _str(ev["event_id"]), _long(ev["occurred_at"]), _str(ev["run_id"]), _long(ev["step"]),
        _str(agent["agent_id"]), _opt(agent["on_behalf_of"]), _str(target["identity_id"]),
        _str(target["identity_type"]), _str(target["lifecycle_state"]), _str(ev["action"]), _str(res["system"]),
        _str(res["resource_id"]), _opt(res["entitlement"]), _long(res["privilege_tier"]), _str(dec["outcome"]),
        _str(dec["authority"]), _opt(dec["approved_by"]), _opt(pol["policy_id"]), _opt(pol["policy_version"]),
        _str(ev["evidence"]["event_hash"]), _long(partition), _long(offset), _strings(codes)))


def as_event(fact: Fact) -> TransitionDict:
    """The transition-shaped view of a fact that the scoring rules read (only the fields a fact has), with
    the agent, its principal and the target as identity keys (:func:`~pipeline.events.identity_key`): the
    correlator keys, matches and names entities in that form; the stored events keep the ids as sent."""
    behalf = fact["on_behalf_of"]
    return {
        "event_id": fact["event_id"], "occurred_at": fact["occurred_at"], "run_id": fact["run_id"],
        "step": fact["step"], "action": fact["action"],
        "agent": {"agent_id": identity_key(fact["agent_id"]), "on_behalf_of": behalf and identity_key(behalf)},
        "target": {"identity_id": identity_key(fact["target_id"]), "identity_type": fact["target_type"],
                   "lifecycle_state": fact["lifecycle_state"]},
        "resource": {"system": fact["system"], "resource_id": fact["resource_id"],
                     "entitlement": fact["entitlement"], "privilege_tier": fact["privilege_tier"]},
        "decision": {"outcome": fact["outcome"], "authority": fact["authority"], "approved_by": fact["approved_by"]},
        "policy": {"policy_id": fact.get("policy_id"), "policy_version": fact.get("policy_version")},
        "evidence": {"event_hash": fact["event_hash"]},
        "source_partition": fact["source_partition"], "source_offset": fact["source_offset"],
        "scorer_codes": fact.get("scorer_codes") or [],
    }


def access_of(fact: Fact) -> str:
    """The access a fact grants or revokes (same naming as the SoD pairs): entitlement, else resource."""
    return fact["entitlement"] or fact["resource_id"]


def holding_key(fact: Fact) -> str:
    """Compaction key on the holdings topic (and of ``KeyedState.holdings``), by identity key: one live
    record per (target, system, access); an account's creation, disabling and deletion each one per (target,
    system), so that no change of an access that happens to share the account's name (a clean-up revoke of
    ``user-account``) replaces the record that the identity left (AG-XRN-007 reads it, any age)."""
    return _holding_key(identity_key(fact["target_id"]), fact["action"], fact["system"], access_of(fact))


_ACCOUNT_KEYS = {"create_account": "#create", "disable_account": "#disable", "delete_account": "#delete"}


def _holding_key(target_id: str, action: str, system: str, access: str) -> str:
    account = _ACCOUNT_KEYS.get(action)
    if account is not None:
        return f"{target_id}\x1f{account}\x1f{system}"
    return f"{target_id}\x1f{system}\x1f{access}"


def is_delegation(fact: Fact) -> bool:
    """An agent granted another agent access: an edge of the delegation graph (grantor -> delegate)."""
    return fact["action"] in GRANTS and is_delegation_change(fact)


def is_delegation_change(fact: Fact) -> bool:
    """An executed change of an agent's access that adds or removes an edge: a grant by another agent, or a
    revoke by anyone (another agent, a clean-up agent, or the delegate giving the access up itself)."""
    return fact["outcome"] == "granted" and _delegation_change(identity_key(fact["agent_id"]),
                                                               identity_key(fact["target_id"]),
                                                               fact["target_type"], fact["action"])


DELEGATE_TYPES = frozenset({"agent", "service"})  # of human, service, agent
"""Identity types whose access changes are delegation edges: an agent, or a service identity, which agents
act as or on behalf of (the event's type is the agent's own label: a delegate typed ``service`` is no less
a delegate)."""


def _delegation_change(agent_id: str, target_id: str, target_type: str, action: str) -> bool:
    return target_type in DELEGATE_TYPES and (agent_id != target_id or action not in GRANTS)


def edge_key(fact: Fact) -> str:
    """Compaction key on the delegations topic: grantor, delegate, system, access."""
    return _edge_key(identity_key(fact["agent_id"]), identity_key(fact["target_id"]), fact["system"], access_of(fact))


def _edge_key(agent_id: str, target_id: str, system: str, access: str) -> str:
    return f"{agent_id}\x1f{target_id}\x1f{system}\x1f{access}"


def check_fact_topics(settings: Settings, topics: dict[str, Any]) -> None:
    """Fail at start, not in every transaction, when the fact topics are missing or mis-sized: facts are
    routed to explicit partitions, and co-partitioning needs exactly ``facts_partitions`` of them."""
    wanted = {settings.topic_facts_by_target: settings.facts_partitions,
              settings.topic_facts_by_agent: settings.facts_partitions,
              settings.topic_holdings: settings.facts_partitions, settings.topic_delegations: 1}
    for topic, n in wanted.items():
        meta = topics.get(topic)
        have = len(meta.partitions) if meta is not None and not meta.error else 0
        if have != n:
            raise ConfigError(f"topic {topic} has {have} partitions, expected {n}: create the topics "
                              "(agentgov run does it) or set AGENTGOV_ACCESS_FACTS=false")


class FactEmitter:
    """Encodes and routes the access facts of one event (the scorer calls it inside its transaction)."""

    def __init__(self, settings: Settings, serde: Serde) -> None:
        self.serde = serde
        self.n = settings.facts_partitions
        self.by_target, self.by_agent = settings.topic_facts_by_target, settings.topic_facts_by_agent
        self.holdings, self.delegations = settings.topic_holdings, settings.topic_delegations
        self.fast = tuple(f["name"] for f in serde.current.raw["fields"]) == WRITTEN_FIELDS
        # Agents by configuration (signing_key_agents' patterns, as sent and folded): an edge into one is a
        # delegation whatever the granting agent labels it. The label is the granting agent's word, and one
        # that called the agent it empowered ``human`` kept the edge out of the graph (red team, session 26).
        patterns = [p for agents in settings.signing_key_agents.values() for p in agents]
        self.agents = identity_pattern(patterns) if patterns else None
        if not self.fast:
            log.warning("fact schema does not match the fast writer; encoding every fact with fastavro",
                        extra={"kv": {"schema_version": serde.current.version}})

    def encode(self, ev: TransitionDict, partition: int, offset: int, codes: Sequence[str] = ()) -> bytes:
        """The fact record's value: framing and datum, as ``serde.encode(fact_from_event(...))``."""
        if self.fast:
            try:
                return self.serde.header() + write_fact(ev, partition, offset, codes)
            except (TypeError, AttributeError, OverflowError):
                pass  # not the decoded record's types: fastavro decides
        return self.serde.encode(fact_from_event(ev, partition, offset, codes))

    def emit(self, produce: Callable[..., None], ev: TransitionDict, partition: int, offset: int,
             codes: Sequence[str] = ()) -> int:
        """Produce the facts of ``ev`` (none unless it changes access); returns how many were produced.
        ``codes``: the finding codes the scorer raised on ``ev``, sorted and distinct (``scorer_codes``)."""
        if ev["action"] not in FACT_ACTIONS:
            return 0
        value = self.encode(ev, partition, offset, codes)  # once, for every topic it goes to
        n = self.n
        # Keyed by identity (identity_key: NFKC case-folded), so every spelling of an entity meets in one key.
        agent_id, target, res = identity_key(ev["agent"]["agent_id"]), ev["target"], ev["resource"]
        agent = agent_id.encode()
        if not is_access_change(ev):  # group creation: the agent's chain only
            produce(self.by_agent, value, key=agent, partition=zlib.crc32(agent) % n)
            return 1
        target_id = identity_key(target["identity_id"])
        target_key = target_id.encode()
        target_partition = zlib.crc32(target_key) % n  # partition_for(target_id), the key's bytes hashed once
        produce(self.by_target, value, key=target_key, partition=target_partition)
        produce(self.by_agent, value, key=agent, partition=zlib.crc32(agent) % n)
        sent = 2
        if ev["decision"]["outcome"] == "granted":  # the keys of holding_key and edge_key, from the event
            access, system = res["entitlement"] or res["resource_id"], res["system"]
            held = _holding_key(target_id, ev["action"], system, access)
            produce(self.holdings, value, key=held.encode(), partition=target_partition)
            sent += 1
            kind = target["identity_type"]
            if kind not in DELEGATE_TYPES and self.agents is not None and self.agents.match(target_id):
                kind = "agent"
            if _delegation_change(agent_id, target_id, kind, ev["action"]):  # is_delegation_change
                produce(self.delegations, value, key=_edge_key(agent_id, target_id, system, access).encode(),
                        partition=0)
                sent += 1
        return sent
