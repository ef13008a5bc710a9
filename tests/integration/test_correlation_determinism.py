"""Correlator determinism on the real broker: the same access facts give the same cross-run findings
(by deterministic finding id) with 1 correlator, with 3, with arrival shuffled inside the grace period,
and with correlator processes killed with SIGKILL mid-stream and restarted; the store keeps each once.

The facts are what the scorers would emit for ``Workload(cross_run=True)`` traffic (``FactEmitter`` over
completed events, partitioned as the producer does); they are produced straight to the fact topics, so the
test exercises the correlation stage alone. Size: ``CORRELATION_EVENTS`` events (default 12,000; the
issue's 200,000 is a manual run on a bigger box).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from prometheus_client import CollectorRegistry

from pipeline.broker import EmbeddedBroker
from pipeline.chaos import Slot
from pipeline.correlations import CorrelationStore
from pipeline.correlator import Correlator
from pipeline.facts import FACT_ACTIONS, FINDING, FactEmitter, partition_for
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.runner import settings_env
from pipeline.schemas import SchemaSet
from pipeline.scoring.policy import load_policy
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.topics import ensure_topics
from pipeline.workload import PLANTED_CROSS_RUN, Workload

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("CORRELATION_EVENTS", "12000"))
PARTS = 6
GRACE = 30.0


def make_settings(broker: EmbeddedBroker, chdb: Path, facts_tag: str, **extra: Any) -> Settings:
    tag = uuid.uuid4().hex[:10]
    names = {f"topic_{n}": f"t{facts_tag}.{n}" for n in ("transitions", "assessments", "dlq", "baselines",
                                                         "facts_by_target", "facts_by_agent", "holdings",
                                                         "delegations")}
    settings = Settings.load(
        kafka_bootstrap=broker.bootstrap, **names, topic_correlations=f"t{tag}.correlations",
        correlator_group=f"correlator-{tag}", scorer_group=f"scorer-{tag}", writer_group=f"writer-{tag}",
        clickhouse_dsn=f"chdb://{chdb}", clickhouse_database=f"t{tag}", metrics_port=0,
        topic_partitions=PARTS, facts_partitions=PARTS, correlation_grace_seconds=GRACE,
        batch_max_seconds=0.1, **extra)
    ensure_topics(settings)
    return settings


def workload_facts(settings: Settings) -> tuple[list[tuple[str, bytes, bytes, int]], int]:
    """(topic, key, value, partition) of every fact, in the order the scorers would emit them."""
    pub = TransitionPublisher(settings)
    emitter = FactEmitter(settings, Serde(SchemaSet.load(), None, record="access_fact"))
    out: list[tuple[str, bytes, bytes, int]] = []
    offsets: Counter[int] = Counter()
    latest = 0

    def capture(topic: str, value: bytes, key: bytes, partition: int) -> None:
        out.append((topic, key, value, partition))

    for op in Workload(seed=5, planted=False, bad_inputs=False, cross_run=True).ops(EVENTS):
        record = pub.complete(op.payload)
        if record["action"] not in FACT_ACTIONS:
            continue
        p = partition_for(record["run_id"], PARTS)  # the producer's partitioner (crc32 of the run id)
        emitter.emit(capture, record, p, offsets[p])
        offsets[p] += 1
        latest = max(latest, record["occurred_at"])
    return out, latest


def produce(settings: Settings, facts: list[tuple[str, bytes, bytes, int]]) -> None:
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "linger.ms": 20}))
    for topic, key, value, partition in facts:
        while True:
            try:
                producer.produce(topic, value, key=key, partition=partition)
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def findings(settings: Settings, idle: float = 5.0) -> tuple[dict[str, str], Counter[bytes]]:
    """finding_id -> code of every finding on the correlations topic, and how often each id was published."""
    serde = Serde(SchemaSet.load(), None, record=FINDING)
    reader = Consumer(settings.consumer_config(f"read-{uuid.uuid4().hex[:8]}"))
    reader.subscribe([settings.topic_correlations])
    ids: dict[str, str] = {}
    seen: Counter[bytes] = Counter()
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            for msg in reader.consume(1000, 0.5):
                if msg.error():
                    continue
                last = time.monotonic()
                seen[msg.key()] += 1
                ids[msg.key().decode()] = serde.decode(msg.value()).record["code"]
    finally:
        reader.close()
    return ids, seen


def settle(settings: Settings, release_at: float, timeout: float = 240) -> dict[str, str]:
    """Wait past the grace, then until two reads of the findings agree."""
    while time.time() < release_at:
        time.sleep(1)
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        now, _ = findings(settings)
        if now == last and now:
            return now
        last = now
        time.sleep(3)
    raise AssertionError(f"findings never settled: {len(last or {})}")


class InProcess:
    """``n`` correlators of one group as threads of this process."""

    def __init__(self, settings: Settings, n: int) -> None:
        self.stop = threading.Event()
        self.threads = []
        policy = load_policy(settings.policy_file)
        for i in range(n):
            c = Correlator(settings.model_copy(update={"instance_id": f"c{i}"}), Metrics(CollectorRegistry()), policy)
            assert c.graph.wait_ready(60)
            t = threading.Thread(target=c.run, args=(self.stop,), daemon=True)
            t.start()
            self.threads.append(t)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def streams(broker: EmbeddedBroker, chdb_path: Path) -> Iterator[dict[str, Any]]:
    ordered_tag, shuffled_tag = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    base = make_settings(broker, chdb_path, ordered_tag)
    facts, latest = workload_facts(base)
    produce(base, facts)
    shuffled = make_settings(broker, chdb_path, shuffled_tag)
    rng = random.Random(3)
    moved = [(t.replace(ordered_tag, shuffled_tag), k, v, p) for t, k, v, p in facts]
    chunks = [moved[i:i + 300] for i in range(0, len(moved), 300)]  # a few seconds of event time each
    for chunk in chunks:
        rng.shuffle(chunk)
    produce(shuffled, [f for chunk in chunks for f in chunk])
    yield {"ordered": ordered_tag, "shuffled": shuffled_tag, "facts": len(facts),
           "release_at": latest / 1000 + GRACE + 5}


def test_one_vs_three_correlators_and_shuffled_arrival_give_the_same_findings(
        broker: EmbeddedBroker, chdb_path: Path, streams: dict[str, Any]) -> None:
    one = make_settings(broker, chdb_path, streams["ordered"])
    three = make_settings(broker, chdb_path, streams["ordered"])
    shuffled = make_settings(broker, chdb_path, streams["shuffled"])
    groups = [InProcess(one, 1), InProcess(three, 3), InProcess(shuffled, 1)]
    try:
        a = settle(one, streams["release_at"])
        b = settle(three, streams["release_at"])
        c = settle(shuffled, streams["release_at"])
    finally:
        for g in groups:
            g.close()
    print(f"\ncorrelation determinism: {streams['facts']} facts from {EVENTS} events, {len(a)} findings "
          f"({dict(Counter(a.values()))})")
    assert set(PLANTED_CROSS_RUN.values()) <= set(a.values())
    assert a == b, "1 vs 3 correlators differ"
    assert a == c, "shuffled arrival within the grace differs from ordered"


def test_kill9_correlators_mid_stream_stores_each_finding_once(
        broker: EmbeddedBroker, chdb_path: Path, streams: dict[str, Any], tmp_path: Path) -> None:
    clean = make_settings(broker, chdb_path, streams["ordered"])
    chaos = make_settings(broker, chdb_path, streams["ordered"])
    reference = InProcess(clean, 1)
    slots = [Slot(f"correlator-{i}", "consumers.correlator", settings_env(chaos), tmp_path) for i in range(2)]
    for s in slots:
        s.start()
    kills = 0
    try:
        deadline = time.monotonic() + 25  # inside the grace: facts pending, some batches committed
        while time.monotonic() < deadline:
            time.sleep(4)
            victim = slots[kills % 2]
            victim.kill()
            kills += 1
            victim.start()
        want = settle(clean, streams["release_at"])
        got = settle(chaos, streams["release_at"] + 10)
    finally:
        reference.close()
        codes = [s.terminate() for s in slots]
    assert kills >= 4 and codes == [0, 0]
    assert got == want
    # stored once: the writer's task over the (possibly duplicated) topic, into a real store
    sink = ClickHouseSink.connect(chaos)
    sink.migrate()
    store = CorrelationStore(chaos, Metrics(CollectorRegistry()), sink)
    stop = time.monotonic() + 60
    while time.monotonic() < stop and store.stored < len(got):
        store.poll_once()
    for _ in range(20):
        store.poll_once()
    store.close()
    rows = sink.query("SELECT uniqExact(finding_id) AS u FROM {db}.cross_run_findings FINAL")[0]
    final = sink.query("SELECT count() AS n FROM {db}.cross_run_findings FINAL")[0]
    assert rows["u"] == final["n"] == len(want)
    print(f"\ncorrelator kill -9: {kills} kills, {len(got)} findings equal to the clean run, stored once")
