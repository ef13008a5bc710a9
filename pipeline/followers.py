"""Follower threads: the compacted topics a role reads whole and keeps following (baselines and risk
exceptions in every scorer, the delegation graph in every correlator).

Anyone who can write such a topic can put any record on it, and a follower that dies leaves its data frozen
with nothing to say so (a dead baselines follower froze ``agentgov_baseline_age_seconds``, so
``AgentgovBaselineStale`` could not fire). So a follower treats each record alone: one it cannot take is
logged and counted (:func:`refused`) and skipped; an error of a whole step (a poll, an eviction) is logged and
waited out (:func:`follow`); and ``agentgov_follower_up{follower}`` says whether the thread still runs.

Example::

    def _follow(self) -> None:
        consumer = Consumer(...)
        try:
            follow("baselines", self.metrics, self._stop, lambda: self._step(consumer))
        finally:
            consumer.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, Message, TopicPartition

from .errors import RegistryUnavailable
from .metrics import Metrics

log = logging.getLogger(__name__)

FOLLOWERS = ("baselines", "exceptions", "delegations")
"""The ``follower`` label's closed set."""
STEP_ERROR_WAIT_SECONDS = 1.0


def refused(follower: str, metrics: Metrics | None, offset: int | None, exc: BaseException) -> None:
    """Log and count one record the follower could not take (it skips it and goes on)."""
    log.warning("follower record refused", extra={"kv": {
        "follower": follower, "offset": offset, "reason": getattr(exc, "reason", type(exc).__name__),
        "error": str(exc)[:300]}})
    if metrics is not None:
        metrics.follower_refused.labels(follower=follower).inc()


def take_each(consumer: Consumer, msgs: Iterable[Message], take: Callable[[bytes, int], object]) -> None:
    """Hand each record of ``msgs`` (not errors, not tombstones) to ``take``, which logs and skips one it
    refuses (:func:`refused`). A registry that does not answer is not the record's fault: the consumer is put
    back on that record and the error raised, so :func:`follow` waits and the record is read again, never
    skipped."""
    for msg in msgs:
        value = msg.value()
        if msg.error() or value is None:
            continue
        try:
            take(value, msg.offset())
        except RegistryUnavailable:
            consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
            raise


def follow(follower: str, metrics: Metrics | None, stop: threading.Event, step: Callable[[], None]) -> None:
    """Run ``step`` until ``stop`` is set. A step that raises is logged and run again after a short wait: it
    never ends the thread. ``agentgov_follower_up`` is 1 meanwhile, 0 when this returns or raises."""
    if metrics is not None:
        metrics.follower_up.labels(follower=follower).set(1)
    try:
        while not stop.is_set():
            try:
                step()
            except Exception as exc:  # a follower's data must not freeze for one fault
                log.error("follower step failed; will retry", exc_info=True, extra={"kv": {
                    "follower": follower, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}})
                stop.wait(STEP_ERROR_WAIT_SECONDS)
    finally:
        if metrics is not None:
            metrics.follower_up.labels(follower=follower).set(0)
        if not stop.is_set():
            log.error("follower stopped", extra={"kv": {"follower": follower}})
