"""FactEmitter (facts.py): the topics, keys and partitions of each access fact, and its bytes, for the demo
workload's events. The partitions are part of the public topology (co-partitioning of holdings with by-target)."""

from __future__ import annotations

from typing import Any

from pipeline.facts import (
    FACT,
    FACT_ACTIONS,
    FactEmitter,
    edge_key,
    fact_from_event,
    holding_key,
    is_access_change,
    is_delegation_change,
    partition_for,
)
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.workload import Workload


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
        agent, target = fact["agent_id"], fact["target_id"]
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
