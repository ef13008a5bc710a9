"""The liveness check (pipeline/liveness.py) on the real brokers.

A scorer that owns a partition with records waiting and is handed nothing of it (the partition paused here,
which is what the wedge the chaos drill saw on Tansu looks like from inside: a member, polling, never fed a
partition it owns) ends itself with ``ConsumerStalled``, and a fresh member of its group scores what waited.
A pipeline of scorers and correlators at rest, caught up on topics written in transactions (commit markers
past the last record; Tansu's own offsets), is never taken for stalled: none is restarted."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from pipeline.broker import free_port
from pipeline.consumer import Scorer
from pipeline.drafts import draft
from pipeline.errors import PublishError
from pipeline.facts import partition_for
from pipeline.kraft import KraftCluster
from pipeline.liveness import ConsumerStalled
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import ClickHouseSink
from pipeline.writer import Writer
from tests.support.helpers import Bus, wait_until

pytestmark = pytest.mark.integration


def _run_on(partition: int, parts: int) -> str:
    """A run id the publisher (crc32 of the key) sends to ``partition``."""
    tag = uuid.uuid4().hex[:8]
    return next(r for r in (f"live-{tag}-{i}" for i in range(10_000)) if partition_for(r, parts) == partition)


class _Role:
    """A scorer's loop in a thread of this test; what ended it is kept."""

    def __init__(self, settings: Settings, on_batch: Callable[[Scorer], None] | None = None) -> None:
        self.scorer = Scorer(settings, Metrics(CollectorRegistry()), load_policy(settings.policy_file))
        self.stop = threading.Event()
        self.ended: BaseException | None = None
        self.ended_at = 0.0
        self.thread = threading.Thread(target=self._run, args=(on_batch,), daemon=True)
        self.thread.start()

    def _run(self, on_batch: Callable[[Scorer], None] | None) -> None:
        try:
            self.scorer.run(self.stop, on_batch=(lambda n: on_batch(self.scorer)) if on_batch else None)
        except BaseException as exc:  # kept for the test to look at
            self.ended = exc
        finally:
            self.ended_at = time.monotonic()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def test_a_scorer_handed_nothing_of_a_partition_ends_itself_and_a_fresh_member_scores_it(
    bus: Bus, settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
) -> None:
    settings = settings_factory(stall_seconds=4.0)
    parts = settings.topic_partitions
    pub = publisher_factory(settings)
    wedged, flowing = 3, 1
    paused: list[int] = []

    def wedge(scorer: Scorer) -> None:
        if not paused:
            scorer.consumer.pause([TopicPartition(settings.topic_transitions, wedged)])
            paused.append(wedged)

    first = _Role(settings, on_batch=wedge)
    try:
        pub.publish(draft(run_id=_run_on(flowing, parts)))
        pub.flush()
        assert wait_until(lambda: paused, 60), "the scorer never consumed its first batch"
        run = _run_on(wedged, parts)
        for step in range(1, 6):
            pub.publish(draft(run_id=run, step=step))
        pub.flush()
        published = time.monotonic()
        assert wait_until(lambda: not first.thread.is_alive(), 60), "a scorer handed nothing of a partition ran on"
        assert isinstance(first.ended, ConsumerStalled), first.ended
        (stalled,) = first.ended.fields["partitions"]
        assert (stalled["topic"], stalled["partition"]) == (settings.topic_transitions, wedged)
        assert stalled["end"] > stalled["at"]
        # The period (4 s) and a quarter more, checked every 2 s: well under 20 s from the records' arrival.
        assert first.ended_at - published < 20, first.ended_at - published
    finally:
        first.close()

    fresh = _Role(settings)
    try:
        assert wait_until(lambda: fresh.scorer.processed >= 5, 90), \
            f"the fresh member scored {fresh.scorer.processed} of the 5 records that waited"
        assert fresh.ended is None
    finally:
        fresh.close()


def test_a_writer_handed_nothing_rejoins_its_group_and_stores_everything(
    bus: Bus, settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
) -> None:
    """The writer is a thread of ``agentgov run``: it does not exit, it leaves its group and joins again."""
    settings = settings_factory(stall_seconds=4.0)
    pub = publisher_factory(settings)
    metrics = Metrics(CollectorRegistry())
    sink = ClickHouseSink.connect(settings)
    sink.migrate()
    scorer = _Role(settings)
    writer = Writer(settings, metrics, sink)
    stop = threading.Event()
    paused: list[bool] = []

    def wedge(_: int) -> None:  # in the writer's loop: every partition it owns stops being handed out
        if not paused:
            writer.consumer.pause(writer.consumer.assignment())
            paused.append(True)

    thread = threading.Thread(target=writer.run, args=(stop,), kwargs={"on_stored": wedge}, daemon=True)
    thread.start()
    try:
        pub.publish(draft(run_id=_run_on(0, settings.topic_partitions)))
        pub.flush()
        assert wait_until(lambda: paused, 60), "the writer never stored its first batch"
        for i in range(30):
            pub.publish(draft(run_id=_run_on(i % settings.topic_partitions, settings.topic_partitions)))
        pub.flush()
        assert wait_until(lambda: writer.stored >= 31, 90), f"the writer stored {writer.stored} of 31"
        assert metrics.registry.get_sample_value(
            "agentgov_process_restarts_total", {"role": "writer", "reason": "stalled"}) == 1
        assert thread.is_alive()
        assert sink.query("SELECT count() AS n FROM {db}.transitions FINAL")[0]["n"] == 31
    finally:
        stop.set()
        thread.join(30)
        scorer.close()


def test_a_pipeline_at_rest_is_never_taken_for_stalled(
    bus: Bus, settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    """Scorers read the SDK's records; correlators read facts the scorers wrote in transactions, whose commit
    markers stand past the last record (and on Tansu, transactions without records leave no offsets). Caught
    up, every partition must count as caught up, on both brokers, for many periods."""
    settings = settings_factory(stall_seconds=3.0)
    pipe = pipeline_factory(settings, scorers=2, correlators=2)
    pub = publisher_factory(settings)
    for i in range(24):
        pub.publish(draft(run_id=_run_on(i % settings.topic_partitions, settings.topic_partitions)))
    pub.flush()
    assert pipe.wait_stored(24, 120), "assessments not stored"
    pids = (pipe.scorer_pids(), pipe.correlator_pids())
    time.sleep(20)  # more than five periods (and their quarter-period second looks) at rest
    restarts = {s.labels["reason"]: s.value for m in pipe.metrics.registry.collect() for s in m.samples
                if s.name == "agentgov_process_restarts_total"}
    assert not restarts, restarts
    assert (pipe.scorer_pids(), pipe.correlator_pids()) == pids
    for log in settings.state_dir.glob("*.log"):
        assert "consumer stalled" not in log.read_text(errors="replace"), log.name



@pytest.mark.parametrize("engine", ["tansu", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_agentgov_run_starts_its_embedded_broker_again_when_it_dies(
    engine: str, settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    """``agentgov run``'s embedded broker killed with SIGKILL: the supervisor starts it again (Tansu on an empty
    log, Kafka on its own) and makes the topics; the scorers, correlator and writer carry on, and what is
    published afterwards is stored. Before, the pipeline polled a dead port for ever."""
    base = settings_factory()
    settings = base.model_copy(update={"kafka_bootstrap": None, "embedded_broker": engine,
                                       "embedded_broker_port": free_port()})
    pipe = pipeline_factory(settings, scorers=1, correlators=1)
    pub = publisher_factory(pipe.settings)
    for i in range(10):
        pub.publish(draft(run_id=f"run-before-{uuid.uuid4().hex[:6]}-{i}"))
    pub.flush()
    assert pipe.wait_stored(10, 120), "assessments not stored before the kill"

    assert pipe.broker is not None
    pids = [n.proc.pid for n in pipe.broker.nodes if n.proc] if isinstance(pipe.broker, KraftCluster) \
        else [pipe.broker.proc.pid] if pipe.broker.proc else []
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    restarted = ("agentgov_process_restarts_total", {"role": "broker", "reason": "exited"})
    assert wait_until(lambda: pipe.metrics.registry.get_sample_value(*restarted) == 1, 30), "no restart counted"
    assert wait_until(lambda: pipe.broker is not None and pipe.broker.alive(), 180), "the broker did not come back"

    fresh = publisher_factory(pipe.settings)
    sent = []
    deadline = time.monotonic() + 120
    while len(sent) < 20 and time.monotonic() < deadline:  # the topics may take a moment to be made again
        try:
            sent += [fresh.publish(draft(run_id=f"run-after-{uuid.uuid4().hex[:6]}-{i}")) for i in range(20)]
            fresh.flush(30)
        except PublishError:
            sent = []
            time.sleep(1)
    assert len(sent) == 20, "the SDK could not deliver to the restarted broker"
    assert pipe.sink is not None

    def stored() -> set[str]:
        assert pipe.sink is not None
        return {r["event_id"] for r in pipe.sink.query("SELECT event_id FROM {db}.transitions FINAL")}

    assert wait_until(lambda: set(sent) <= stored(), 180, interval=1.0), \
        f"missing {len(set(sent) - stored())} of the 20 published after the restart"
