"""The batch loop of a transactional role: consume a batch, handle it in one transaction, repeat.

:class:`TransactionalLoop` owns the consumer, the :class:`~pipeline.checkpoint.Checkpoint` and the
rebalance callbacks; a role (the scorer, the correlator) fills in what a batch means:

- ``rebuild(tp)``: on assignment, and after an aborted batch, rebuild the partition's context (usually
  by :func:`~pipeline.recovery.replay` up to ``tp.offset``, the committed offset);
- ``forget(partition)``: drop it on revoke;
- ``handle(msgs)``: produce the batch's outputs with ``self.checkpoint.producer``; returns a tally;
- ``account(tally, msgs)``: fold the tally into metrics after the commit;
- ``wrote(tally)``: whether the batch produced any record (``Checkpoint.commit``);
- ``tick()``: between batches (policy reload, time-based flushes).

A partition it owns that has records waiting and delivers nothing for ``stall_seconds`` ends ``run`` with
:class:`~pipeline.liveness.ConsumerStalled` (``liveness.py``): the process exits for a fresh group member.

On a failed transaction the loop aborts (or replaces the producer), rewinds every assigned partition to
its committed offset and rebuilds its context, so the batch is processed again from scratch. A schema
registry that does not answer (:class:`~pipeline.errors.RegistryUnavailable`) is handled the same way,
after a back-off: the batch waits for the registry instead of being dead-lettered.

Example::

    class Scorer(TransactionalLoop): ...
    Scorer(settings, metrics, policy).run(stop)       # until ``stop`` (a threading.Event) is set
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from .checkpoint import Checkpoint
from .errors import RegistryUnavailable
from .liveness import StallWatch
from .membership import Membership
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)

RETRY_BACKOFF_MAX = 10.0
"""Longest pause between two attempts to abort-and-rewind, or to read committed offsets on assignment."""
GC_FULL_EVERY_SECONDS = 600.0
"""How often a role's whole heap is scanned for garbage cycles (see :meth:`TransactionalLoop._collect`)."""
ASSIGN_RETRY_SECONDS = 120.0
"""How long an assignment retries reading committed offsets and replaying before the process gives up.
Time inside the rebalance callback does not count toward librdkafka's max.poll.interval.ms, and the group's
heartbeats go on meanwhile; the partitions are assigned before the rebuild, so a rebalance that starts
meanwhile does not wait for it (``_on_assign``). A rebuild on a rewind runs between two polls, and one past
``AGENTGOV_MAX_POLL_INTERVAL_SECONDS`` leaves the group (docs/guarantees.md, "A correlator rebuilds its
whole window")."""


class TransactionalLoop:
    """Consumer + checkpoint + rebalance handling shared by the stateful roles."""

    role = "role"

    def __init__(self, settings: Settings, metrics: Metrics, *, group: str, topics: list[str],
                 consumer_extra: dict[str, Any] | None = None, producer_extra: dict[str, Any] | None = None
                 ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topics = topics
        self.consumer = Consumer(settings.consumer_config(group, **(consumer_extra or {})))
        self.membership = Membership(self.consumer, self.role)
        self.liveness = StallWatch(self.consumer, self.role, settings.stall_seconds)
        self.checkpoint = Checkpoint(settings, self.consumer,
                                     Checkpoint.transactional_id(self.role, group, settings.instance_id),
                                     **(producer_extra or {}))
        self.processed = 0
        self._stop = threading.Event()
        self._registry_backoff = 0.0
        self._next_housekeeping = 0.0
        self._next_full_gc = time.monotonic() + GC_FULL_EVERY_SECONDS

    @property
    def producer(self) -> Any:
        return self.checkpoint.producer

    # -- what a role fills in -----------------------------------------------------------------
    def rebuild(self, tp: TopicPartition) -> None:
        """Rebuild the context of ``tp`` from the log before ``tp.offset`` (the committed offset)."""

    def rebuild_all(self, tps: list[TopicPartition]) -> None:
        """Rebuild every partition of an assignment (or a rewind); a role whose rebuild reads other topics
        may read them for all the partitions at once."""
        for tp in tps:
            self.rebuild(tp)

    def forget(self, partition: TopicPartition) -> None:
        """Drop what is kept for a partition this process no longer owns."""

    def handle(self, msgs: list[Message]) -> Any:
        raise NotImplementedError

    def account(self, tally: Any, msgs: list[Message]) -> None:
        """Fold a committed batch's tally into metrics."""

    def wrote(self, tally: Any) -> bool:
        """Whether the batch produced any record (False: only offsets; see ``Checkpoint.commit``). True unless
        the role knows better: saying True of a batch that wrote nothing costs only Tansu's lost offsets."""
        return True

    def tick(self) -> None:
        """Called between batches, whether or not a batch arrived."""

    def housekeeping(self) -> None:
        """Called every few seconds."""

    # -- rebalance ----------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Take the partitions first, then rebuild (still inside the callback). librdkafka rejoins a rebalance
        # only once the assignment is done: with the rebuild first, a member joining meanwhile made Kafka wait
        # max.poll.interval.ms for this one, then drop it and hand the newcomer every partition (measured,
        # docs/guarantees.md). Assigned, this member rejoins at once keeping what it owns, and gives up the
        # newcomer's share when the rebuild returns (its revoke runs in the next poll). Fetching starts
        # meanwhile, at the committed offsets the rebuild replays up to; nothing is consumed before it ends.
        consumer.incremental_assign(partitions)
        # During a broker failover the group coordinator or a partition leader may be away for a while:
        # retry rather than let the exception out of consume(), which would end the process.
        deadline = time.monotonic() + ASSIGN_RETRY_SECONDS
        backoff = 0.5
        while True:
            try:
                self._rebuild(consumer.committed(partitions, timeout=30), "assignment")
                break
            except KafkaException as exc:
                if time.monotonic() + backoff > deadline or self._stop.is_set():
                    raise
                log.warning("assignment not recovered yet; retrying",
                            extra={"kv": {"role": self.role, "error": str(exc), "retry_in_s": backoff}})
                time.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX)
        log.info("partitions assigned", extra={"kv": {"role": self.role,
                                                      "partitions": [p.partition for p in partitions]}})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.forget(tp)
        log.info("partitions revoked", extra={"kv": {"role": self.role,
                                                     "partitions": [p.partition for p in partitions]}})

    # -- the loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event, on_batch: Callable[[int], None] | None = None) -> None:
        self._stop = stop
        self.membership.subscribe(self.topics, on_assign=self._on_assign,
                                  on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.metrics.up.labels(role=self.role).set(1)
        try:
            while not stop.is_set():
                self.tick()
                msgs = self.consumer.consume(self.settings.batch_max_messages, self.settings.batch_max_seconds)
                self.liveness.delivered(msgs)
                if msgs or self.wants_empty_batch():
                    self.process(msgs)
                    if on_batch is not None and msgs:
                        on_batch(len(msgs))
                self._housekeeping()
        finally:
            self.metrics.up.labels(role=self.role).set(0)
            self.close()

    def wants_empty_batch(self) -> bool:
        """True when an empty poll should still run a transaction (e.g. a wall-clock flush is due)."""
        return False

    def _housekeeping(self, every: float = 2.0) -> None:
        now = time.monotonic()
        if now < self._next_housekeeping:
            return
        self._next_housekeeping = now + every
        record_lag(self.consumer, self.metrics, self.role)
        self.liveness.check()  # raises ConsumerStalled: the process ends, its supervisor starts a fresh member
        self.housekeeping()

    def process(self, msgs: list[Message]) -> None:
        """Handle one batch inside one transaction. On failure, abort and rewind to the last commit."""
        started = time.perf_counter()
        try:
            self.checkpoint.begin()
            tally = self.handle(msgs)
            self.checkpoint.commit(wrote=self.wrote(tally))
        except (KafkaException, RegistryUnavailable) as exc:
            log.warning("batch aborted; rewinding", extra={"kv": {"role": self.role, "error": str(exc)}})
            self.metrics.batches.labels(role=self.role, outcome="aborted").inc()
            self._recover()
            if isinstance(exc, RegistryUnavailable):
                self.metrics.registry_errors.labels(role=self.role).inc()
                self._registry_backoff = min(max(self._registry_backoff * 2, 0.5), 5.0)
                time.sleep(self._registry_backoff)
            return
        self._registry_backoff = 0.0
        self.account(tally, msgs)
        self.processed += len(msgs)
        self.metrics.batches.labels(role=self.role, outcome="committed").inc()
        self.metrics.batch_duration.labels(role=self.role).observe(time.perf_counter() - started)
        self._collect()

    def _collect(self) -> None:
        """After each batch: collect the young generations (what this batch allocated), then freeze what
        survived. A role's context (the correlator's keyed state, the scorer's partition context) is
        hundreds of thousands of acyclic dicts that live for the window; left to the cyclic collector, every
        older-generation pass walked all of them again (26% of a correlator's CPU in the correlation
        benchmark, `perf`). Frozen objects are still freed by reference counting when the window drops
        them; only a garbage *cycle* among them would wait, for the full collection every
        ``GC_FULL_EVERY_SECONDS``."""
        gc.collect(1)
        if time.monotonic() >= self._next_full_gc:
            self._next_full_gc = time.monotonic() + GC_FULL_EVERY_SECONDS
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    def _recover(self) -> None:
        """Abort the failed transaction and rewind to the last commit. Both talk to the cluster, which may
        be failing over (the transaction coordinator or a partition leader away): retried with backoff
        until they succeed or the process is asked to stop. Consuming on without a rewind would skip the
        aborted batch, so there is no giving up half-way."""
        backoff = 0.5
        while True:
            try:
                self.checkpoint.recover()
                self.rewind()
                return
            except KafkaException as exc:
                if self._stop.is_set():  # stopping: nothing of the batch was committed; the next owner replays
                    log.warning("rewind abandoned at stop", extra={"kv": {"role": self.role, "error": str(exc)}})
                    return
                log.warning("rewind failed; retrying", extra={"kv": {"role": self.role, "error": str(exc),
                                                                   "retry_in_s": backoff}})
                time.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF_MAX)

    def rewind(self) -> None:
        """Seek every assigned partition back to its committed offset and rebuild its context."""
        assignment = self.consumer.assignment()
        if not assignment:
            return
        committed = self.consumer.committed(assignment, timeout=30)
        self._rebuild(committed, "rewind")
        for tp in committed:
            if tp.offset >= 0:
                self.consumer.seek(tp)
            else:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, 0))

    def _rebuild(self, tps: list[TopicPartition], cause: str) -> None:
        """``rebuild_all``, timed. A rebuild on a rewind runs between two polls: past ``max.poll.interval.ms``
        the member leaves its group and loses its partitions. One on assignment runs inside the rebalance
        callback, where that interval does not run, but a member joining meanwhile waits for it to get its
        share. Either way one past half of the interval is logged as a warning, with the way out."""
        started = time.monotonic()
        self.rebuild_all(tps)
        if not tps:
            return
        took = time.monotonic() - started
        self.metrics.rebuild_duration.labels(role=self.role).observe(took)
        limit = self.settings.max_poll_interval_seconds
        if took >= limit / 2:
            log.warning("state rebuild took over half of max.poll.interval.ms", extra={"kv": {
                "role": self.role, "cause": cause, "partitions": len(tps), "seconds": round(took, 1),
                "max_poll_interval_seconds": limit,
                "hint": "raise AGENTGOV_MAX_POLL_INTERVAL_SECONDS above the longest rebuild, or add replicas"}})

    def close(self) -> None:
        try:
            self.membership.leave()
        except Exception as exc:  # KafkaException/KafkaError: a slow coordinator on a real cluster at shutdown;
            # what was processed is committed with its transaction already, so exiting 0 is right
            log.warning("consumer close failed", extra={"kv": {"role": self.role, "error": str(exc)}})
        self.checkpoint.flush(10)


def record_lag(consumer: Consumer, metrics: Metrics, role: str) -> None:
    """Messages behind the high watermark per assigned partition (cached watermarks: no broker call)."""
    assignment = consumer.assignment()
    if not assignment:
        return
    lag: dict[int, int] = {}
    for tp in consumer.position(assignment):
        try:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
        except KafkaException:
            continue
        if tp.offset >= 0 and high >= 0:
            # A role reading two topics (the correlator) reports partition p's lag summed over them.
            lag[tp.partition] = lag.get(tp.partition, 0) + max(0, high - tp.offset)
    for partition, behind in lag.items():
        metrics.consumer_lag.labels(role=role, partition=str(partition)).set(behind)
