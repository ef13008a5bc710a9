"""The delegation graph follows its topic closely: an edge committed is in the graph, and ``sync`` to the
topic's end returns, within about one fetch wait (``fetch_wait_max_ms``), on Tansu and on Kafka.

Every correlator batch that judges a privileged grant without human authority first brings the graph up to
the topic's end (``Correlator._sync_graph``): the time the follower takes to read a committed edge is a stall
of that batch and part of the time to page a laundering chain. Until session 16 the follower read with a
batch consume that could wait out its 0.2 s timeout for a full batch, with librdkafka's default fetch wait
(500 ms), which Tansu holds a fetch for: a sync on Tansu took 0.2-0.4 s (median 0.2 s), on the 3-broker
Kafka cluster a few milliseconds either way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.delegations import DelegationGraph
from pipeline.events import TransitionDict
from pipeline.facts import FACT, fact_from_event
from pipeline.publisher import TransitionPublisher
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.workload import run_step
from tests.support.helpers import Bus

pytestmark = pytest.mark.integration

EDGES = 8


def _edge(publisher: TransitionPublisher, i: int) -> TransitionDict:
    """Agent ``agent-a`` grants agent ``agent-b{i}`` a role-admin role: a delegation edge."""
    return publisher.complete(run_step(f"run-deleg-{i}", 0, "agent-a", "jml-provisioning", ("mover", f"HR-7{i:04d}"),
                                       "assign_role", f"agent-b{i}", "okta", "role/RoleAdmin", 2,
                                       target__identity_type="agent"))


def test_a_committed_edge_is_in_the_graph_within_a_fetch_wait(bus: Bus, settings_factory: Callable[..., Settings],
                                                              publisher_factory: Callable[..., TransitionPublisher]
                                                              ) -> None:
    settings = settings_factory()
    publisher = publisher_factory(settings)
    serde = Serde(SchemaSet.load(), None, record=FACT)
    graph = DelegationGraph(settings, serde).start()
    producer = Producer(settings.kafka_config(**{"transactional.id": f"deleg-{settings.correlator_group}"}))
    probe = Consumer(settings.kafka_config(**{"group.id": f"probe-{settings.correlator_group}",
                                              "isolation.level": "read_committed"}))
    tp = TopicPartition(settings.topic_delegations, 0)
    waits: list[float] = []
    try:
        assert graph.wait_ready(30)
        producer.init_transactions(30)
        for i in range(EDGES):
            producer.begin_transaction()
            producer.produce(settings.topic_delegations, serde.encode(fact_from_event(_edge(publisher, i), 0, i)),
                             key=f"agent-a|agent-b{i}".encode(), partition=0)
            producer.commit_transaction(30)
            _, high = probe.get_watermark_offsets(tp, timeout=10, cached=False)
            started = time.monotonic()
            assert graph.sync(high, 10.0), f"the graph did not reach offset {high} of its topic in 10 s"
            waits.append(time.monotonic() - started)
        deadline = time.monotonic() + 10
        while graph.read < EDGES and time.monotonic() < deadline:
            time.sleep(0.01)
        assert graph.read == EDGES
        assert [e["target"]["identity_id"] for e in graph.since(0, EDGES)] == [f"agent-b{i}" for i in range(EDGES)]
        assert [e["agent"]["agent_id"] for e in graph.into("agent-b3")] == ["agent-a"]
    finally:
        graph.stop()
        probe.close()
    # One fetch wait is 100 ms (settings.fetch_wait_max_ms); the median sync was 0.2-0.25 s before the fix.
    median = statistics.median(waits)
    print(f"sync after commit on {bus.kind}: median {median * 1000:.0f} ms, max {max(waits) * 1000:.0f} ms")
    assert median < 0.15, f"sync took {[round(w, 3) for w in waits]} s"
