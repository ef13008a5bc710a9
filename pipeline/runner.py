"""Process layout of one agentgov deployment on one machine (``agentgov run`` / ``agentgov demo``).

    agentgov run (this process)
    ├── embedded broker subprocess   (only when AGENTGOV_KAFKA_BOOTSTRAP is unset: Tansu, in memory, or with
    │                                 AGENTGOV_EMBEDDED_BROKER=kafka one Apache Kafka KRaft node whose log
    │                                 survives restarts, under .agentgov/kafka)
    ├── scorer subprocess x N        (python -m consumers.scorer; stateless, one consumer group)
    ├── correlator subprocess x M    (python -m consumers.correlator; cross-run rules, one consumer group)
    └── writer thread                (owns the ClickHouse client; chdb allows one process per path; also
                                      stores the correlator's findings)

Scorer and correlator subprocesses are supervised: one that dies is restarted and its partitions move to the others
meanwhile; one whose partition stalls ends itself (``liveness.py``, exit 75) to be restarted the same way. The
embedded broker is started again if it dies, and the writer's loop if it fails. In production (compose) each box
is its own container, restarted by compose.

Example::

    with Pipeline(settings, scorers=2) as pipe:
        ...                                   # publish; pipe.writer.stored counts stored assessments
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from types import TracebackType

from . import correlations
from .baselines import attach
from .broker import EmbeddedBroker, bind_error
from .decision_log import attach as attach_decision_log
from .errors import ConfigError
from .kraft import KraftCluster
from .liveness import EXIT_STALLED
from .metrics import Metrics
from .process import ChildProcess
from .scoring.policy import load_policy
from .settings import ENV_PREFIX, Settings, revealed
from .sinks.clickhouse import ClickHouseSink, wait_for
from .topics import ensure_topics
from .writer import Writer

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0
"""Longest pause before the writer's loop, or a scorer or correlator process, is started again after a failure."""
RESTART_HEALTHY_SECONDS = 30.0
"""A scorer or correlator that failed (a positive exit code other than 75) after running this long is started
again at once; one that failed sooner is in a crash loop (its metrics port taken, a setting it refuses) and
waits a pause that doubles from 1 s up to ``RESTART_BACKOFF_MAX``, so the loop costs little and its log
and the restarts counter say why, instead of a restart a second (CI: 599 in 400 s)."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build the same settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = revealed(getattr(settings, name))
        if value is None:
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[ENV_PREFIX + name.upper()] = str(value)
    return env


class Pipeline:
    """Broker, topics, migrations, scorer subprocesses and the writer, started and stopped together."""

    def __init__(self, settings: Settings, *, scorers: int = 1, metrics: Metrics | None = None,
                 log_dir: Path | None = None, supervise: bool = True,
                 scorer_metrics_ports: list[int] | None = None, correlators: int = 1,
                 correlator_metrics_ports: list[int] | None = None) -> None:
        self.settings = settings
        self.scorers = scorers
        self.correlators = correlators if settings.access_facts else 0
        self.correlator_metrics_ports = correlator_metrics_ports
        self.metrics = metrics or Metrics()
        self.log_dir = log_dir
        self.supervise = supervise
        self.scorer_metrics_ports = scorer_metrics_ports
        self.broker: EmbeddedBroker | KraftCluster | None = None
        self.procs: list[ChildProcess] = []
        self.correlator_procs: list[ChildProcess] = []
        self.correlation_store: correlations.CorrelationStore | None = None
        self.writer: Writer | None = None
        self.sink: ClickHouseSink | None = None
        self.stop_event = threading.Event()
        self._writer_thread: threading.Thread | None = None
        self._supervisor: threading.Thread | None = None
        # per child (role, index): when it was last started, its current pause, and a restart waiting for it
        self._started: dict[tuple[str, int], float] = {}
        self._backoff: dict[tuple[str, int], float] = {}
        self._restart_due: dict[tuple[str, int], float] = {}

    def metrics_ports(self) -> list[tuple[str, int, int]]:
        """The /metrics port of every child as (role, index, port); 0 serves none. By default scorers serve
        on the pipeline's port + 1.., correlators after them."""
        out = []
        for role, count, ports in (("scorer", self.scorers, self.scorer_metrics_ports),
                                   ("correlator", self.correlators, self.correlator_metrics_ports)):
            for index in range(count):
                if ports is not None:
                    port = ports[index]
                else:
                    base = self.settings.metrics_port
                    port = base + (1 + index if role == "scorer" else 1 + self.scorers + index) if base else 0
                out.append((role, index, port))
        return out

    def check_metrics_ports(self) -> None:
        """Refuse to start when a child's metrics port is taken: the child would fail to bind and be
        restarted for ever (a port next to the pipeline's own may be held by any program, or by a
        connection's ephemeral port). Checked before anything starts; a port taken after this check makes
        that child exit with a ConfigError, restarted with a growing pause (``RESTART_HEALTHY_SECONDS``)."""
        addr = self.settings.metrics_addr
        taken = [f"{role} {index}: {addr}:{port} ({why})" for role, index, port in self.metrics_ports()
                 if port and (why := bind_error(port, addr))]
        if taken:
            raise ConfigError(
                f"cannot serve children's metrics: {', '.join(taken)}. Children serve /metrics on the ports "
                f"after AGENTGOV_METRICS_PORT ({self.settings.metrics_port}): free them, or choose a port with "
                f"{len(self.metrics_ports())} free ports after it (0 disables metrics)")

    def start(self) -> Pipeline:
        self.check_metrics_ports()
        s = self.settings
        if s.starts_embedded_broker:
            if s.embedded_broker == "kafka":
                self.broker = KraftCluster(s.kafka_dir(), nodes=1, ports=[s.embedded_broker_port]).start()
            else:
                log_path = (self.log_dir / "tansu.log") if self.log_dir else None
                self.broker = EmbeddedBroker(s.embedded_broker_port, log_path).start()
            s = self.settings = s.model_copy(update={"kafka_bootstrap": self.broker.bootstrap})
        ensure_topics(s)
        self.sink = ClickHouseSink.connect(s)
        self.sink.migrate()
        for i in range(self.scorers):
            self.procs.append(self._spawn(i))
        for i in range(self.correlators):
            self.correlator_procs.append(self._spawn(i, "correlator"))
        self.writer = Writer(s, self.metrics, self.sink)
        self.baselines = attach(self.writer, s, self.sink, load_policy(s.policy_file))
        self.decision_log = attach_decision_log(self.writer, s, self.sink)
        if self.correlators:
            self.correlation_store = correlations.attach(self.writer, s, self.sink)
        self._writer_thread = threading.Thread(target=self._run_writer, name="writer", daemon=True)
        self._writer_thread.start()
        if self.supervise:
            self._supervisor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _spawn(self, index: int, role: str = "scorer") -> ChildProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(settings_env(self.settings))
        port = next(p for r, i, p in self.metrics_ports() if (r, i) == (role, index))
        env[ENV_PREFIX + "METRICS_PORT"] = str(port)
        env[ENV_PREFIX + "INSTANCE_ID"] = f"{role}-{index}"  # a restart fences its predecessor's transaction
        log_path = self.log_dir / f"{role}-{index}.log" if self.log_dir else None
        self._started[(role, index)] = time.monotonic()
        return ChildProcess([sys.executable, "-m", f"consumers.{role}"], env=env, log_path=log_path,
                            inherit_output=True).start()

    def _run_writer(self) -> None:
        """The writer's loop, started again as a fresh group member if it fails (a fault of ours, or of a
        library under it, must not leave the pipeline without a writer while the rest runs on), after a pause
        that doubles up to ``RESTART_BACKOFF_MAX``; what it had not stored is handed out again."""
        assert self.writer is not None
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                self.writer.run(self.stop_event)
                return
            except Exception:
                log.exception("writer failed; restarting it", extra={"kv": {"retry_in_s": backoff}})
                self.metrics.restarts.labels(role="writer", reason="exited").inc()
                if self.stop_event.wait(backoff):
                    return
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)
                self.writer.rejoin()

    def _watch_broker(self) -> None:
        """The embedded broker, started again where it was if it died (Tansu: on an empty in-memory log, as after
        any restart of it, docs/guarantees.md; embedded Kafka: on its log), and the topics made again."""
        broker = self.broker
        if broker is None or broker.alive() or self.stop_event.is_set():
            return
        log.error("embedded broker exited; starting it again", extra={"kv": {"bootstrap": self.settings.bootstrap()}})
        self.metrics.restarts.labels(role="broker", reason="exited").inc()
        try:
            if isinstance(broker, KraftCluster):
                broker.revive()
            else:
                broker.start()
            ensure_topics(self.settings)
        except Exception as exc:  # BrokerError, KafkaException: tried again on the next round
            log.error("embedded broker did not come back; trying again", extra={"kv": {"error": str(exc)}})
            if not self.stop_event.is_set() and isinstance(broker, EmbeddedBroker):
                broker.stop()  # a half-started process: the next round starts a clean one
        else:
            log.warning("embedded broker back", extra={"kv": {"bootstrap": self.settings.bootstrap()}})

    def _watch(self) -> None:
        while not self.stop_event.wait(1.0):
            self._watch_broker()
            self._watch_children(time.monotonic())

    def _watch_children(self, now: float) -> None:
        """Start again each scorer or correlator that ended: at once when it was killed (a signal), stalled
        (exit 75: a fresh group member is the cure) or had run ``RESTART_HEALTHY_SECONDS``; after a pause
        that doubles while it keeps failing soon after its start (a crash loop)."""
        for role, procs in (("scorer", self.procs), ("correlator", self.correlator_procs)):
            for i, proc in enumerate(procs):
                if self.stop_event.is_set():
                    return
                key = (role, i)
                due = self._restart_due.get(key)
                if due is not None:
                    if now >= due:
                        del self._restart_due[key]
                        self._started[key] = now
                        proc.start()
                    continue
                if proc.poll() is None:
                    continue
                code = proc.returncode
                reason = "stalled" if code == EXIT_STALLED else "exited"
                failed_soon = (code is not None and code > 0 and code != EXIT_STALLED
                               and now - self._started.get(key, float("-inf")) < RESTART_HEALTHY_SECONDS)
                pause = min(max(self._backoff.get(key, 0.0) * 2, 1.0), RESTART_BACKOFF_MAX) if failed_soon else 0.0
                self._backoff[key] = pause
                log.warning(f"{role} {reason}; restarting", extra={"kv": {
                    "index": i, "code": code, "reason": reason, "retry_in_s": pause}})
                self.metrics.restarts.labels(role=role, reason=reason).inc()
                if pause:
                    self._restart_due[key] = now + pause
                else:
                    self._started[key] = now
                    proc.start()

    def scorer_pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def correlator_pids(self) -> list[int]:
        return [p.pid for p in self.correlator_procs]

    def wait_stored(self, count: int, timeout: float) -> bool:
        """True once the writer has handled ``count`` records: every copy, duplicate and dead letter counts.

        To know that particular events are in the audit store, use :meth:`wait_events`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.writer is not None and self.writer.stored >= count:
                return True
            time.sleep(0.1)
        return False

    def wait_events(self, event_ids: Collection[str], timeout: float) -> bool:
        """True once every one of these events is in the audit store, however many copies were delivered.

        A redelivered or re-produced record (an aborted transaction on Tansu, a commit lost after the store)
        reaches the writer twice and counts twice in ``wait_stored``, so a count can be met while some
        events are still on their way."""
        sink, wanted = self.sink, sorted(set(event_ids))
        if sink is None:
            return False
        return wait_for(lambda: int(sink.query("SELECT uniqExact(event_id) AS n FROM {db}.transitions WHERE "
                                               "event_id IN {ids:Array(String)}", {"ids": wanted})[0]["n"])
                        >= len(wanted), timeout, interval=0.5)

    def stop(self) -> None:
        self.stop_event.set()
        if self._supervisor is not None:
            self._supervisor.join(RESTART_BACKOFF_MAX + 180)  # a broker restart under way ends first
        for proc in (*self.procs, *self.correlator_procs):
            proc.terminate()
        for proc in (*self.procs, *self.correlator_procs):
            proc.stop(grace=20)
        if self._writer_thread is not None:
            self._writer_thread.join(30)
        if getattr(self, "decision_log", None) is not None:
            self.decision_log.close()
        if self.correlation_store is not None:
            self.correlation_store.close()
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
