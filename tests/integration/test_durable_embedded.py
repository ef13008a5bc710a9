"""Durable embedded mode: ``agentgov run`` with AGENTGOV_EMBEDDED_BROKER=kafka keeps its log under
``.agentgov/kafka``. A clean stop/restart, and a ``kill -9`` of the whole process tree (agentgov, scorers
and the Kafka JVM together), lose nothing a publisher was told was delivered, dead letters included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.broker import free_port, free_port_run
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.settings import Settings
from tests.support.chaos import query_store
from tests.support.helpers import consume, scrape, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.kafka]
AGENTGOV = [sys.executable, "-m", "pipeline.cli"]


class Run:
    """One ``agentgov run`` process tree in its own session (so ``kill -9`` can take the whole tree)."""

    def __init__(self, tmp_path: Path, broker_port: int, metrics_port: int) -> None:
        self.metrics_port = metrics_port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTGOV_")}
        self.env.update({
            "AGENTGOV_EMBEDDED_BROKER": "kafka",
            "AGENTGOV_EMBEDDED_BROKER_PORT": str(broker_port),
            "AGENTGOV_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'store'}",
            "AGENTGOV_STATE_DIR": str(tmp_path / "state"),
            "AGENTGOV_METRICS_PORT": str(metrics_port),
            "AGENTGOV_BATCH_MAX_SECONDS": "0.1",
            "AGENTGOV_WRITER_BATCH_SECONDS": "0.2",
        })
        self.log = tmp_path / "run.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Run:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*AGENTGOV, "run", "--scorers", "1"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_until(self.up, 180), f"agentgov run did not come up: {self.log.read_text()[-3000:]}"
        return self

    def up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agentgov run exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            return scrape(self.metrics_port).get(("agentgov_process_up", (("role", "writer"),)), 0) == 1
        except OSError:
            return False

    def stored(self) -> float:
        return scrape(self.metrics_port).get(("agentgov_sink_rows_total", (("table", "ingest"),)), 0)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)

    def kill_tree(self) -> None:
        """SIGKILL to every process of the tree at once: no shutdown hook runs anywhere."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def scored(settings: Settings) -> bool:
    """The scorer group has committed every transition on the topic."""
    reader = Consumer(settings.kafka_config(**{"group.id": settings.scorer_group, "enable.auto.commit": False}))
    try:
        parts = [TopicPartition(settings.topic_transitions, p) for p in range(settings.topic_partitions)]
        done = reader.committed(parts, timeout=10)
        ends = [reader.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
        return all(max(tp.offset, 0) == end for tp, end in zip(done, ends, strict=True))  # -1001: nothing yet
    finally:
        reader.close()


def quiet(run: Run, seconds: float = 4.0) -> Callable[[], bool]:
    """A predicate: the writer's stored count has not moved for ``seconds``."""
    seen = {"n": -1.0, "since": time.monotonic()}

    def check() -> bool:
        n = run.stored()
        if n != seen["n"]:
            seen.update(n=n, since=time.monotonic())
        return time.monotonic() - seen["since"] >= seconds

    return check


def publish(settings: Settings, n: int, tag: str) -> list[str]:
    """Publish ``n`` events and flush: returning means every one of them was acknowledged (acks=all)."""
    pub = TransitionPublisher(settings)
    ids = [pub.publish(draft(run_id=f"run-{tag}-{i % 7}", step=i)) for i in range(n)]
    pub.flush(60)
    assert pub.delivered == n
    return ids


def test_stop_restart_and_kill9_of_the_tree_lose_nothing_acknowledged(tmp_path: Path) -> None:
    run = Run(tmp_path, free_port(), free_port_run(8)).start()  # metrics: the run's, then its children's
    settings = Settings.load(kafka_bootstrap=f"127.0.0.1:{run.env['AGENTGOV_EMBEDDED_BROKER_PORT']}")
    acked: list[str] = []
    try:
        acked += publish(settings, 200, "a")
        assert wait_until(lambda: run.stored() >= 200, 90)

        # 1. a clean stop and restart: the log (topics, offsets, transactions) is still there
        assert run.stop() == 0
        assert (tmp_path / "state" / "kafka" / "node-1" / "data" / "meta.properties").exists()
        run.start()
        acked += publish(settings, 200, "b")
        assert wait_until(lambda: run.stored() >= 200, 90), "events published after the restart not stored"

        # 2. acknowledged, then kill -9 of the whole tree before the pipeline could store them
        acked += publish(settings, 300, "c")
        garbage = f"garbage-{uuid.uuid4().hex[:6]}".encode()
        producer = TransitionPublisher(settings).producer
        producer.produce(settings.topic_transitions, b"\x17" + garbage, key=garbage)
        assert producer.flush(30) == 0
        run.kill_tree()
        run.start()
        # everything acknowledged before the kill is scored after it (the transitions topic is not
        # transactional, so its end offset is exact), then stored: the writer goes quiet
        assert wait_until(lambda: scored(settings), 120), "the scorers did not catch up after kill -9"
        assert wait_until(quiet(run), 60), "the writer did not settle"
        dead = consume(settings, settings.topic_dlq, 1, timeout=60)
        assert garbage in {m.key() for m in dead}, "the dead letter of an input sent before kill -9 is gone"
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.stop()

    rows: list[dict[str, Any]] = query_store(
        Settings.load(clickhouse_dsn=run.env["AGENTGOV_CLICKHOUSE_DSN"]),
        "SELECT event_id, count() AS n FROM {db}.transitions FINAL GROUP BY event_id",
    )[0]
    stored = {r["event_id"]: r["n"] for r in rows}
    missing = set(acked) - set(stored)
    print(f"\nDURABLE FIGURES acknowledged={len(acked)} stored={len(stored)} lost={len(missing)}")
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {sorted(missing)[:3]}"
    assert all(n == 1 for n in stored.values())
