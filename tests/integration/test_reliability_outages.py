"""Outages on real components: the store failing for 30 s, SIGTERM, a partition revoke, a broker restart."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.drafts import draft
from pipeline.errors import PublishError
from pipeline.kraft import KraftCluster
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.runner import settings_env
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.topics import ensure_topics
from pipeline.writer import Writer
from tests.support.chaos import Slot, query_store
from tests.support.faults import FaultyClient
from tests.support.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    reader = Consumer(settings.kafka_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        tps = reader.committed([TopicPartition(topic, p) for p in range(settings.topic_partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        reader.close()


def writer_idle(settings: Settings, timeout: float, quiet: float = 5.0) -> None:
    """Wait until the writer group has committed something and then nothing new for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last: dict[int, int] = {}
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = committed(settings, settings.writer_group, settings.topic_assessments)
        if now != last:
            last, since = now, time.monotonic()
        elif now and time.monotonic() - since > quiet:
            return
        time.sleep(0.5)
    visible = {}
    for level in ("read_committed", "read_uncommitted"):
        reader = Consumer(settings.consumer_config(f"diag-{time.monotonic_ns()}", **{"isolation.level": level}))
        reader.subscribe([settings.topic_assessments])
        n, end = 0, time.monotonic() + 10
        while time.monotonic() < end:
            n += sum(1 for m in reader.consume(1000, 0.5) if not m.error())
        reader.close()
        visible[level] = n
    raise AssertionError(f"writer never settled: {last}; assessments visible {visible}")


def publish(pub: TransitionPublisher, n: int, tag: str) -> list[str]:
    ids = [pub.publish(draft(run_id=f"run-{tag}-{i}", **{"target.identity_id": f"u{i}"})) for i in range(n)]
    pub.flush()
    return ids


class WriterThread:
    """The writer in this process, on a (possibly fault-wrapped) in-process chdb store."""

    def __init__(self, settings: Settings, faults: bool = False) -> None:
        self.metrics = Metrics(CollectorRegistry())
        self.sink = ClickHouseSink.connect(settings)
        self.sink.migrate()
        self.faults: FaultyClient | None = None
        if faults:
            self.faults = FaultyClient(self.sink.client)
            self.sink.client = self.faults  # type: ignore[assignment]
        self.writer = Writer(settings, self.metrics, self.sink)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.writer.run, args=(self.stop,), daemon=True)

    def start(self) -> WriterThread:
        self.thread.start()
        return self

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def scorer_slot(tmp_path: Path) -> Iterator[Callable[[Settings], Slot]]:
    made: list[Slot] = []

    def make(settings: Settings, name: str = "scorer-0") -> Slot:
        slot = Slot(name, "consumers.scorer", settings_env(settings), tmp_path).start()
        made.append(slot)
        return slot

    yield make
    for slot in made:
        slot.terminate(20)


def test_store_outage_pauses_backs_off_commits_nothing_and_resumes_without_loss(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    scorer_slot: Callable[[Settings], Slot],
) -> None:
    settings = settings_factory()
    scorer_slot(settings)
    w = WriterThread(settings, faults=True).start()
    faults = w.faults
    assert faults is not None
    pub = publisher_factory(settings)
    try:
        before = publish(pub, 100, "before")
        assert wait_until(lambda: w.writer.stored >= 100, 90)
        stored_offsets = committed(settings, settings.writer_group, settings.topic_assessments)
        last_stored = w.sample("agentgov_last_stored_timestamp_seconds")

        # 15 s of error responses, then 15 s of hanging requests, with traffic arriving all along.
        faults.fail_for(15, kind="error")
        during = publish(pub, 100, "during-errors")
        assert wait_until(lambda: w.sample("agentgov_consumer_paused", role="writer") == 1, 15)
        assert wait_until(lambda: not faults.failing, 20)
        faults.fail_for(15, kind="timeout")
        during += publish(pub, 100, "during-timeouts")
        time.sleep(5)
        # Nothing past what is stored is committed, and nothing new claims to be stored.
        assert committed(settings, settings.writer_group, settings.topic_assessments) == stored_offsets
        assert w.writer.stored == 100
        assert w.sample("agentgov_last_stored_timestamp_seconds") == last_stored
        assert w.sample("agentgov_consumer_paused", role="writer") == 1
        assert w.sample("agentgov_process_up", role="writer") == 1  # alive, just waiting
        assert wait_until(lambda: not faults.failing, 20)

        assert wait_until(lambda: w.writer.stored >= 300, 60), f"stored {w.writer.stored} after the outage"
        assert wait_until(lambda: w.sample("agentgov_consumer_paused", role="writer") == 0, 10)
        # A failed attempt fails at the event_id lookup (first copy wins) or at the insert: one closed label each.
        errors = sum(w.sample("agentgov_sink_errors_total", table=table, kind=kind)
                     for table in ("event_ids", "ingest") for kind in ("InjectedServerError", "InjectedTimeout"))
        assert w.sample("agentgov_sink_errors_total", table="event_ids", kind="InjectedServerError") >= 1
        failures = faults.failures["error"] + faults.failures["timeout"]
        print(f"\nOUTAGE attempts_failed={failures} (errors={faults.failures['error']} "
              f"timeouts={faults.failures['timeout']}) sink_errors_total={errors}")
        assert errors == failures, "every failed attempt is counted once"
        assert faults.failures["error"] >= 2 and faults.failures["timeout"] >= 1
        assert failures <= 20, "the writer backs off instead of hammering a failing store"
        assert w.sink.count("transitions") == 300
        rows = w.sink.query("SELECT count() AS raw, uniqExact(event_id) AS ids FROM {db}.transitions")[0]
        assert rows["ids"] == 300
        stored_ids = {r["event_id"] for r in w.sink.query("SELECT event_id FROM {db}.transitions FINAL")}
        assert stored_ids == set(before + during)
    finally:
        w.close()


def test_sigterm_finishes_batch_commits_and_exits_zero(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    tmp_path: Path,
) -> None:
    settings = settings_factory(clickhouse_dsn=f"chdb://{tmp_path / 'store'}", writer_batch_seconds=1.0)
    env = settings_env(settings)
    scorer = Slot("scorer-0", "consumers.scorer", env, tmp_path).start()
    writer = Slot("writer", "consumers.writer", env, tmp_path).start()
    try:
        pub = publisher_factory(settings)
        ids = publish(pub, 10_000, "term")
        assert wait_until(lambda: sum(committed(settings, settings.scorer_group, settings.topic_transitions).values())
                          > 0, 60)
        # Mid-stream: both get SIGTERM, finish what they hold, commit, and exit 0.
        assert scorer.terminate(60) == 0
        assert writer.terminate(60) == 0
        scorer.start()
        writer.start()
        assert wait_until(lambda: sum(committed(settings, settings.scorer_group, settings.topic_transitions).values())
                          == len(ids), 90)
        writer_idle(settings, 120)
        assert scorer.terminate(60) == 0
        assert writer.terminate(60) == 0
        (raw,), (final,) = query_store(
            settings, "SELECT count() AS n, uniqExact(event_id) AS ids FROM {db}.transitions",
            "SELECT count() AS n FROM {db}.transitions FINAL")
        assert final["n"] == raw["ids"] == len(ids)
        # A clean stop is not a crash: nothing was stored twice.
        assert raw["n"] == len(ids)
    finally:
        scorer.kill()
        writer.kill()
    logs = (tmp_path / "scorer-0.log").read_text() + (tmp_path / "writer.log").read_text()
    assert logs.count("scorer stopped") == 2 and logs.count("writer stopped") == 2


def test_revoke_commits_what_is_stored_before_letting_go(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    scorer_slot: Callable[[Settings], Slot],
) -> None:
    # A long batch window, so the first writer still holds consumed-but-unstored messages at the rebalance.
    settings = settings_factory(writer_batch_seconds=20.0)
    scorer_slot(settings)
    first = WriterThread(settings).start()
    pub = publisher_factory(settings)
    second: WriterThread | None = None
    try:
        ids = publish(pub, 600, "revoke")
        assert wait_until(lambda: len(first.writer.pending) >= 100, 60)
        assert first.writer.stored == 0
        second = WriterThread(settings).start()
        # The rebalance moves partitions; the first writer stores and commits their pending messages.
        assert wait_until(lambda: committed(settings, settings.writer_group, settings.topic_assessments), 30)
        assert first.writer.stored > 0
        assert wait_until(lambda: first.writer.stored + second.writer.stored >= len(ids), 60)
        raw = first.sink.query("SELECT count() AS n, uniqExact(event_id) AS ids FROM {db}.transitions")[0]
        assert raw == {"n": len(ids), "ids": len(ids)}, "a revoke must not cause a second write"
    finally:
        first.close()
        if second is not None:
            second.close()


def restartable(engine: str, port: int, tmp_path: Path) -> EmbeddedBroker | KraftCluster:
    """A broker of its own for a test that stops and restarts it on the same port."""
    if engine == "kafka":
        return KraftCluster(tmp_path / "kafka", nodes=1, ports=[port])
    return EmbeddedBroker(port, tmp_path / "tansu.log")


# On Kafka (one node, SIGTERM then restart on the same log) librdkafka 2.16.0 was seen to block inside
# rd_kafka_send_offsets_to_transaction well past its timeout (upstream 5456/5511); the checkpoint's watchdog
# (pipeline/checkpoint.py) now aborts, replays and replaces the producer when a coordinator call blocks.
@pytest.mark.parametrize("engine", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_broker_restart_clients_reconnect_and_sdk_surfaces_failures(
    engine: str, settings_factory: Callable[..., Settings], tmp_path: Path, scorer_slot: Callable[[Settings], Slot],
) -> None:
    port = free_port()
    broker = restartable(engine, port, tmp_path).start()
    settings = settings_factory(kafka_bootstrap=broker.bootstrap)  # topics created on this broker
    scorer = scorer_slot(settings)
    w = WriterThread(settings).start()
    sdk = TransitionPublisher(settings)
    short = TransitionPublisher(settings, producer=Producer(settings.kafka_config(**{
        "enable.idempotence": True, "acks": "all", "message.timeout.ms": 5000})))
    try:
        publish(sdk, 50, "pre")
        assert wait_until(lambda: w.writer.stored >= 50, 60)

        broker.stop()
        # Down: an agent's events cannot be delivered, and the SDK says so, naming every one of them.
        lost = [short.publish(draft(run_id=f"run-down-{i}")) for i in range(20)]
        with pytest.raises(PublishError) as caught:
            short.flush(30)
        assert sorted(caught.value.fields["event_ids"]) == sorted(lost)
        assert short.delivered == 0 and short.failed == []

        # Tansu: in memory, a fresh, empty log. Kafka: the same log, offsets and transactions come back.
        broker.start()
        ensure_topics(settings)
        time.sleep(8)  # longer than a session: on Tansu the old group state is gone too
        assert scorer.alive(), f"scorer exited (code {scorer.proc.poll() if scorer.proc else None}) across the restart"
        assert w.thread.is_alive(), "the writer must survive a broker restart"

        fresh = TransitionPublisher(settings)
        after = publish(fresh, 50, "post")
        # The agent's long-lived producer reconnects too; whatever it cannot deliver it reports, never drops.
        # Its idempotent producer may have failed fatally across the restart (Tansu forgot its producer id):
        # a publish or the flush then raises, naming the events in flight, and a new producer carries on.
        attempted = [str(uuid.uuid4()) for _ in range(20)]
        sent, reported = [], set()
        for i, event_id in enumerate(attempted):
            try:
                sent.append(sdk.publish(draft(run_id=f"run-old-{i}", event_id=event_id)))
            except PublishError as exc:
                reported |= set(exc.fields["event_ids"])
        try:
            sdk.flush(60)
        except PublishError as exc:
            reported |= set(exc.fields.get("event_ids", sent))
        assert reported <= set(attempted)  # it names only its own events: none is lost without a word
        after += [e for e in sent if e not in reported]
        # Having reported them, it delivers again. Session 26: on Tansu, whose restart forgot the producer's id,
        # the old producer's every record was answered UNKNOWN_PRODUCER_ID and timed out, for good; a delivery
        # that times out now has the next flush start a new producer.
        again: list[str] = []
        deadline = time.monotonic() + 100
        while len(again) < 10 and time.monotonic() < deadline:
            ids = [sdk.publish(draft(run_id=f"run-again-{len(again)}-{i}")) for i in range(5)]
            try:
                sdk.flush(40)
            except PublishError:
                continue  # named; the next round goes out on a new producer
            again += ids
        assert len(again) >= 10, "the agent's long-lived publisher never delivered again after the restart"
        after += again
        def stored() -> set[str]:
            return {r["event_id"] for r in w.sink.query("SELECT event_id FROM {db}.transitions FINAL")}

        # Every event delivered after the restart is stored (not just any 100: the old SDK's 20 may come last).
        assert wait_until(lambda: set(after) <= stored(), 150, interval=1.0), \
            f"stored {w.writer.stored}; missing {len(set(after) - stored())} of {len(after)}"
    finally:
        w.close()
        scorer.terminate(20)
        broker.stop()
