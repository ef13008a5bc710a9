"""FactEmitter (facts.py): the topics, keys and partitions of each access fact, and its bytes, for the demo
workload's events. The partitions are part of the public topology (co-partitioning of holdings with by-target)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.facts import (
    FACT,
    FACT_ACTIONS,
    FactEmitter,
    edge_key,
    fact_from_event,
    holding_key,
    is_access_change,
    is_delegation,
    is_delegation_change,
    partition_for,
)
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.workload import Workload, run_step
from tests.unit.scoring_factory import event


def test_each_fact_goes_once_encoded_to_its_keyed_topics_and_partitions() -> None:
    settings = Settings.load(kafka_bootstrap="127.0.0.1:1", facts_partitions=12)
    pub = TransitionPublisher(settings)  # complete() only: never connects
    serde = Serde(SchemaSet.load(), None, record=FACT)
    emitter = FactEmitter(settings, serde)
    calls: list[tuple[str, bytes, bytes, int]] = []

    def produce(topic: str, value: bytes, *, key: bytes, partition: int, **_: Any) -> None:
        calls.append((topic, value, key, partition))

    seen = {"delegations": 0, "group": 0}
    for i, op in enumerate(Workload(seed=3, bad_inputs=False, cross_run=True).ops(1_000)):
        ev = pub.complete(op.payload)
        calls.clear()
        sent = emitter.emit(produce, ev, i % 6, i)
        assert sent == len(calls)
        if ev["action"] not in FACT_ACTIONS:
            assert calls == []
            continue
        fact = fact_from_event(ev, i % 6, i)
        agent, target = fact["agent_id"].casefold(), fact["target_id"].casefold()  # keyed by identity key
        want = [(settings.topic_facts_by_agent, agent.encode(), partition_for(agent, 12))]
        if is_access_change(ev):
            want.insert(0, (settings.topic_facts_by_target, target.encode(), partition_for(target, 12)))
            if fact["outcome"] == "granted":
                want.append((settings.topic_holdings, holding_key(fact).encode(), partition_for(target, 12)))
                if is_delegation_change(fact):
                    want.append((settings.topic_delegations, edge_key(fact).encode(), 0))
                    seen["delegations"] += 1
        else:
            seen["group"] += 1
        assert [(t, k, p) for t, _, k, p in calls] == want
        assert {v for _, v, _, _ in calls} == {serde.encode(fact)}
        assert serde.decode(calls[0][1]).record == fact
    assert seen["delegations"] and seen["group"], seen


def test_an_agent_giving_up_its_own_access_removes_an_edge_and_granting_itself_adds_none() -> None:
    """A revoke of an agent's access ends the delegation edges that gave it, whoever revokes it; one by the
    agent itself must reach the delegations topic too. A self-grant is no edge (AG-ESC-004's pattern)."""
    settings = Settings.load(kafka_bootstrap="127.0.0.1:1")
    pub = TransitionPublisher(settings)
    emitter = FactEmitter(settings, Serde(SchemaSet.load(), None, record=FACT))
    for action, to_graph in (("remove_role", True), ("assign_role", False)):
        ev = pub.complete(run_step("run-self", 0, "agent-c", "jml-provisioning", ("mover", "HR-1"), action,
                                   "agent-c", "entra-id", "role/RoleAdmin", 2, target__identity_type="agent"))
        calls: list[str] = []

        def produce(topic: str, value: bytes, *, calls: list[str] = calls, **_: Any) -> None:
            calls.append(topic)

        emitter.emit(produce, ev, 0, 1)
        assert (settings.topic_delegations in calls) is to_graph, (action, calls)
        assert is_delegation_change(fact_from_event(ev, 0, 1)) is to_graph


@pytest.mark.parametrize(("identity_type", "edge"), [("agent", True), ("service", True), ("human", False)])
def test_a_grant_to_an_agent_or_a_service_identity_is_a_delegation_edge(identity_type: str, edge: bool) -> None:
    """The target's type is the agent's own label: a delegate labelled ``service`` is a delegate all the same
    (agents act as service identities), so its edge reaches the graph."""
    settings = Settings.load(kafka_bootstrap="127.0.0.1:1")
    pub = TransitionPublisher(settings)
    emitter = FactEmitter(settings, Serde(SchemaSet.load(), None, record=FACT))
    ev = pub.complete(run_step("run-deleg", 0, "agent-a", "jml-provisioning", ("mover", "HR-1"), "assign_role",
                               "delegate-b", "entra-id", "role/RoleAdmin", 2, target__identity_type=identity_type))
    calls: list[str] = []
    emitter.emit(lambda topic, value, **_: calls.append(topic), ev, 0, 1)
    assert (settings.topic_delegations in calls) is edge
    assert is_delegation(fact_from_event(ev, 0, 1)) is edge


def test_the_fast_writer_writes_fastavros_bytes_for_any_values_the_schema_allows() -> None:
    """write_fact against fastavro over random values: empty, long (past one length byte) and non-ASCII
    strings, absent and present optionals, negative and 64-bit-wide numbers. A value of another type (a
    datetime timestamp) is left to fastavro, and so is a schema whose fields differ."""
    import random
    from datetime import UTC, datetime

    import pytest

    from pipeline.facts import WRITTEN_FIELDS, write_fact

    settings = Settings.load(kafka_bootstrap="127.0.0.1:1")
    serde = Serde(SchemaSet.load(), None, record=FACT)
    emitter = FactEmitter(settings, serde)
    assert emitter.fast and tuple(f["name"] for f in serde.current.raw["fields"]) == WRITTEN_FIELDS
    rnd = random.Random(7)

    def text() -> str:
        return "".join(rnd.choice("aZ09-_\x1fé€😀 ") for _ in range(rnd.choice([0, 1, 5, 63, 64, 200, 300])))

    def opt() -> str | None:
        return None if rnd.random() < 0.4 else text()

    def num(bits: int) -> int:
        return rnd.choice([0, 1, 63, 64, -1, -64, -65, 2 ** (bits - 1) - 1, -(2 ** (bits - 1)),
                           rnd.randrange(-(2 ** (bits - 1)), 2 ** (bits - 1))])

    for _ in range(2_000):
        ev: dict[str, Any] = {
            "event_id": text(), "occurred_at": num(64), "run_id": text(), "step": num(32), "action": text(),
            "agent": {"agent_id": text(), "on_behalf_of": opt()},
            "target": {"identity_id": text(), "identity_type": text(), "lifecycle_state": text()},
            "resource": {"system": text(), "resource_id": text(), "entitlement": opt(), "privilege_tier": num(32)},
            "decision": {"outcome": text(), "authority": text(), "approved_by": opt()},
            "policy": {"policy_id": opt(), "policy_version": opt()}, "evidence": {"event_hash": text()}}
        partition, offset = num(32), num(64)
        codes = rnd.choice([[], [text()], [text() for _ in range(rnd.choice([2, 63, 64]))]])
        want = serde.encode(fact_from_event(ev, partition, offset, codes))  # type: ignore[arg-type]
        assert serde.header() + write_fact(ev, partition, offset, codes) == want  # type: ignore[arg-type]
        assert emitter.encode(ev, partition, offset, codes) == want  # type: ignore[arg-type]
    ev["occurred_at"] = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)  # fastavro's error stands
    with pytest.raises(TypeError, match="occurred_at"):
        emitter.encode(ev, 1, 2)  # type: ignore[arg-type]
    emitter.fast = False
    ev["occurred_at"] = 5
    assert emitter.encode(ev, 1, 2) == serde.encode(fact_from_event(ev, 1, 2))  # type: ignore[arg-type]


def test_every_spelling_of_an_identity_goes_to_one_key_and_partition() -> None:
    """Facts are keyed and routed by identity key (case-folded), so the correlator owning an identity sees
    every spelling of it; the fact itself keeps the ids as sent. An agent granting its own id in another case
    grants itself: no delegation edge."""
    settings = Settings.load(kafka_bootstrap="127.0.0.1:1", facts_partitions=12)
    emitter = FactEmitter(settings, Serde(SchemaSet.load(), None, record=FACT))
    routes: dict[str, set[tuple[str, bytes, int]]] = {}
    for agent, target in (("Agent-7", "Alice@Corp.example"), ("agent-7", "alice@corp.example"),
                          ("AGENT-7", "ALICE@CORP.EXAMPLE")):
        ev = event(**{"action": "grant_entitlement", "agent.agent_id": agent, "target.identity_id": target})

        def route(topic: str, value: bytes, *, key: bytes, partition: int, **_: Any) -> None:
            routes.setdefault(topic, set()).add((topic, key, partition))
        emitter.emit(route, ev, 0, 1)
    assert all(len(r) == 1 for r in routes.values()), routes
    assert routes[settings.topic_facts_by_target] == {
        (settings.topic_facts_by_target, b"alice@corp.example", partition_for("alice@corp.example", 12))}
    ev = event(**{"action": "assign_role", "agent.agent_id": "Agent-7", "target.identity_id": "agent-7",
                  "target.identity_type": "agent"})
    topics: list[str] = []
    emitter.emit(lambda topic, value, **_: topics.append(topic), ev, 0, 1)
    assert settings.topic_delegations not in topics and not is_delegation_change(fact_from_event(ev, 0, 1))


@pytest.mark.parametrize(("target", "edge"), [("agent-jml-07", True), ("Agent-JML-07", True), ("svc-x", False)])
def test_a_grant_to_an_agent_named_by_the_signing_bindings_is_an_edge_whatever_its_label(target: str,
                                                                                          edge: bool) -> None:
    """Red team, session 26: agent-a gave another agent RoleAdmin labelled ``human`` and the edge never reached
    the graph, so the laundering chain through it was not found. An identity that ``signing_key_agents`` binds
    as an agent (its patterns, in any case) is a delegate whatever the granting agent calls it; without such
    a binding a ``human`` label still keeps the grant out of the graph (docs/guarantees.md)."""
    settings = Settings.load(kafka_bootstrap="127.0.0.1:1", signing_key_agents={"k-jml": ["agent-jml-*"]})
    pub = TransitionPublisher(settings)
    emitter = FactEmitter(settings, Serde(SchemaSet.load(), None, record=FACT))
    ev = pub.complete(run_step("run-deleg", 0, "agent-a", "jml-provisioning", ("mover", "HR-1"), "assign_role",
                               target, "entra-id", "role/RoleAdmin", 2, target__identity_type="human"))
    calls: list[str] = []
    emitter.emit(lambda topic, value, **_: calls.append(topic), ev, 0, 1)
    assert (settings.topic_delegations in calls) is edge
