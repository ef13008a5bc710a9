"""Consumer-group membership: subscribe, know when the join completed, and leave without wedging the group.

Tansu 0.6 (the embedded broker) keeps a member that leaves the group *before its first join completed*
as the group's leader for good: ``close()`` sends LeaveGroup, and every member that joins afterwards
gets a generation led by the departed member, whose SyncGroup never comes, so each SyncGroup answers
REBALANCE_IN_PROGRESS and the group is never assigned a partition again (seen for 200 s; only a broker
restart ends it). A member that dies without leaving is expired after ``session.timeout.ms``, as it
should be. A role stopped within its first seconds (a SIGTERM during start-up, a supervisor restarting a
tree) is enough to stop all consumption of that group.

So :meth:`Membership.leave` first lets a join in progress complete, bounded by ``JOIN_WAIT_SECONDS``,
and then closes. What it reads meanwhile is dropped: the role has stopped and commits nothing more, so
the next owner reads it again. On Kafka the wait is harmless (the join completes within
``group.initial.rebalance.delay.ms``, 3 s by default).

Example::

    membership = Membership(consumer, role="writer")
    membership.subscribe([topic], on_revoke=flush_and_commit)
    ...
    membership.leave()
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger(__name__)

Callback = Callable[[Consumer, list[TopicPartition]], None]

JOIN_WAIT_SECONDS = 15.0
"""Longest a stopping member waits for its first join to complete before it leaves anyway."""


class Membership:
    """One consumer's place in its group."""

    def __init__(self, consumer: Consumer, role: str) -> None:
        self.consumer = consumer
        self.role = role
        self.subscribed = False
        self.joined = False
        """True once a join completed (librdkafka calls the assign callback, with an empty list too)."""
        self._leaving = False
        """Set by :meth:`leave`: an assignment from then on is not handed on, and a second leave does nothing."""

    def subscribe(self, topics: list[str], *, on_assign: Callback | None = None,
                  on_revoke: Callback | None = None, on_lost: Callback | None = None) -> None:
        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.joined = True
            if on_assign is not None and not self._leaving:  # leaving: nothing will be processed
                on_assign(consumer, partitions)

        callbacks: dict[str, Callback] = {"on_assign": assigned}
        if on_revoke is not None:
            callbacks["on_revoke"] = on_revoke
        if on_lost is not None:
            callbacks["on_lost"] = on_lost
        self.consumer.subscribe(topics, **callbacks)
        self.subscribed = True

    def leave(self, wait: float = JOIN_WAIT_SECONDS) -> None:
        """Close the consumer (LeaveGroup), after letting a first join in progress complete.

        Raises what ``Consumer.close`` raises, except for a consumer closed already."""
        if self._leaving:
            return
        self._leaving = True
        if self.subscribed and not self.joined:
            started = time.monotonic()
            log.info("stopping during the group join; leaving once it completes",
                     extra={"kv": {"role": self.role, "wait_max_s": wait}})
            try:
                while not self.joined and time.monotonic() - started < wait:
                    self.consumer.consume(500, 0.1)  # dropped: nothing is committed after the stop
            except (KafkaException, RuntimeError) as exc:
                log.warning("group join not awaited", extra={"kv": {"role": self.role, "error": str(exc)}})
            if not self.joined:
                log.warning("leaving before the group join completed",
                            extra={"kv": {"role": self.role, "waited_s": round(time.monotonic() - started, 1)}})
        with contextlib.suppress(RuntimeError):  # closed already
            self.consumer.close()
