"""Broker failure on the 3-broker KRaft cluster while 100,000 events stream through 2 scorers and the writer.

Two faults in one stream, one after the other: ``kill -9`` of a broker (restarted 15 s later), then
``kill -9`` of the broker leading the ``__transaction_state`` partition that holds scorer-0's
transactional.id (also restarted). Publishers use the SDK and see no error: librdkafka retries into the
new leaders. The scorers are never restarted. Every event_id is stored once, and the assessments topic,
read with ``isolation.level=read_committed``, holds each one once. The stall after each fault (the
longest time the scorers' committed position did not move while input was waiting) is printed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.kraft import KraftCluster
from pipeline.publisher import TransitionPublisher
from pipeline.runner import settings_env
from pipeline.settings import Settings
from pipeline.workload import Workload
from tests.support.chaos import Slot, read_store
from tests.support.helpers import Bus, committed, topic_keys

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.kafka]

EVENTS = 100_000
TXN_PARTITIONS = 10  # transaction.state.log.num.partitions of the harness (pipeline/kraft.py)


def txn_partition(transactional_id: str, partitions: int = TXN_PARTITIONS) -> int:
    """Kafka's partitionFor: Java String.hashCode, masked positive, modulo the partition count."""
    h = 0
    for unit in transactional_id.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % partitions


class Progress(threading.Thread):
    """Samples the scorers' committed position twice a second; stalls are read from the samples."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            n = committed(self.settings, self.settings.scorer_group, self.settings.topic_transitions)
            if n >= 0:
                self.samples.append((time.monotonic(), n))

    def stall_after(self, t0: float, window: float = 90.0) -> float:
        """Longest span after ``t0`` (within ``window``) in which the committed position did not advance."""
        points = [(t, n) for t, n in self.samples if t0 <= t <= t0 + window]
        longest, since, last = 0.0, t0, None
        for t, n in points:
            if last is not None and n > last:
                longest = max(longest, t - since)
                since = t
            last = n if last is None else max(last, n)
        return round(longest, 1)


def stream(settings: Settings, records: list[dict[str, Any]], errors: list[str], seconds: float) -> None:
    """The agents' side: the SDK, paced over ``seconds``; delivery errors are collected, never expected."""
    pub = TransitionPublisher(settings, on_error=lambda event_id, err: errors.append(f"{event_id}: {err}"))
    chunk = 1000
    pause = seconds / (len(records) / chunk)
    for i, record in enumerate(records):
        pub.send(record)
        if i % chunk == chunk - 1:
            time.sleep(pause)
    try:
        pub.flush(180)
    except Exception as exc:  # PublishError: recorded so the test names it
        errors.append(repr(exc))


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a process's log without librdkafka's connection chatter, for a failure message."""
    if not path.exists():
        return "(no log)"
    kept = [ln for ln in path.read_text(errors="replace").splitlines() if "logger=librdkafka" not in ln]
    return "\n".join(kept[-lines:])


def workload(settings: Settings, events: int) -> list[dict[str, Any]]:
    pub = TransitionPublisher(settings)
    records = [pub.complete(op.payload) for op in Workload(seed=5, planted=False, bad_inputs=False).ops(events)
               if op.kind in ("draft", "record") and op.send == "send" and op.mutate is None]
    assert len(records) >= 0.95 * events, f"the workload gave only {len(records)} events"
    return records


def wait_isr_full(cluster: KraftCluster, topics: list[str], timeout: float = 120.0) -> float:
    """Seconds until every partition of ``topics`` has all 3 replicas in sync again."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        md = admin.list_topics(timeout=10)
        if all(len(p.isrs) == 3 for t in topics for p in md.topics[t].partitions.values()):
            return round(time.monotonic() - t0, 1)
        time.sleep(1)
    raise AssertionError(f"ISR not full after {timeout}s")


@pytest.mark.parametrize("bus", ["kafka"], indirect=True)
def test_broker_kill_and_txn_coordinator_kill_lose_nothing(
    bus: Bus, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    cluster = bus.cluster
    assert cluster is not None
    # A store of its own: the store is read by a subprocess (read_store), which the session's chdb path refuses
    # once this process has opened it (unit tests do).
    settings = settings_factory(writer_batch_seconds=0.5, baseline_refresh_seconds=86_400.0,
                                clickhouse_dsn=f"chdb://{tmp_path / 'store'}")
    records = workload(settings, EVENTS)
    expected = {str(r["event_id"]) for r in records}

    env = settings_env(settings)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    scorers = [Slot(f"scorer-{i}", "consumers.scorer", {**env, "AGENTGOV_INSTANCE_ID": f"scorer-{i}"}, log_dir)
               for i in range(2)]
    writer = Slot("writer", "consumers.writer", env, log_dir)
    for slot in [*scorers, writer]:
        slot.start()
    pids = [s.proc.pid for s in scorers if s.proc is not None]
    progress = Progress(settings)
    progress.start()
    errors: list[str] = []
    feeder = threading.Thread(target=stream, args=(settings, records, errors, 100.0))
    t_start = time.monotonic()
    feeder.start()
    figures: dict[str, Any] = {"events": len(records)}
    try:
        # fault 1: kill -9 a broker that is not the controller-of-choice for anything in particular
        time.sleep(20)
        victim = cluster.leader(settings.topic_transitions, 0)
        t_kill = time.monotonic()
        cluster.kill(victim)
        time.sleep(15)
        cluster.restart(victim)
        figures["broker_killed"] = victim
        figures["isr_full_after_restart_s"] = wait_isr_full(
            cluster, [settings.topic_transitions, settings.topic_assessments])
        figures["stall_broker_kill_s"] = progress.stall_after(t_kill, 60)

        # fault 2: kill -9 the leader of scorer-0's __transaction_state partition (its coordinator)
        tid = f"agentgov-scorer-{settings.scorer_group}-scorer-0"
        coordinator = cluster.leader("__transaction_state", txn_partition(tid))
        t_kill2 = time.monotonic()
        cluster.kill(coordinator)
        time.sleep(15)
        cluster.restart(coordinator)
        figures["coordinator_killed"] = coordinator
        figures["isr_full_after_coordinator_restart_s"] = wait_isr_full(cluster, ["__transaction_state"])
        feeder.join(300)
        assert not feeder.is_alive(), "the publisher did not finish"
        figures["publish_seconds"] = round(time.monotonic() - t_start, 1)

        deadline = time.monotonic() + 300
        while progress.samples[-1][1] < len(records) and time.monotonic() < deadline:
            time.sleep(1)
        figures["stall_coordinator_kill_s"] = progress.stall_after(t_kill2, 60)
        alive = [s.alive() for s in scorers]
        same = [s.proc.pid for s in scorers if s.proc is not None] == pids
        time.sleep(8)  # the writer stores the last committed assessments
    finally:
        progress.stop.set()
        codes = [slot.terminate(60) for slot in [*scorers, writer]]
        for n in cluster.nodes:  # leave the session's cluster whole, every replica in sync, for the next test
            if not n.alive():
                cluster.restart(n.node_id)
        cluster.wait_in_sync()
    figures["total_seconds"] = round(time.monotonic() - t_start, 1)

    got = read_store(settings)
    topic = topic_keys(settings, settings.topic_assessments)
    lost = expected - got["event_ids"]
    figures.update(stored=got["transitions"], lost=len(lost), duplicates_topic=sum(topic.values()) - len(topic),
                   raw_duplicates_store=got["assessments_raw"] - got["assessments"], publisher_errors=len(errors))
    print("\nFAILOVER FIGURES " + " ".join(f"{k}={v}" for k, v in figures.items()))

    assert not errors, errors[:3]
    assert alive == [True, True] and same, (
        "the scorers must ride through broker failures without a restart; "
        f"exit codes {codes[:2]}; logs:\n" + "\n".join(f"--- {s.name}\n{log_tail(log_dir / (s.name + '.log'))}"
                                                 for s in scorers))
    assert codes == [0, 0, 0], f"SIGTERM exit codes {codes}"
    assert not lost, f"{len(lost)} events lost, e.g. {sorted(lost)[:3]}"
    assert got["transitions_ids"] == got["assessments_ids"] == got["transitions"] == len(expected)
    assert not got["repeated_ids"] and not got["repeated_assessment_ids"]
    assert set(topic) == {k.encode() for k in expected} and all(n == 1 for n in topic.values())
