"""Liveness of a consumer: a partition it owns with records waiting, from which nothing arrived for a while.

A consumer can stay a member of its group, poll, and still be handed nothing from a partition it owns. The
chaos drill saw it on Tansu 0.6, about one run in four: after a member left during a join, two scorers were
both assigned partitions 1 and 5 and neither fetched them, for minutes. The loop goes on, lag grows, and
nothing ends it. The usual answer is a liveness check that ends the process, so that its supervisor
(``agentgov run``, compose's restart policy, a Kubernetes Deployment) starts a fresh member, which joins
under a new member id and gets a clean assignment. The writer, a thread of ``agentgov run`` that commits only
what it stored, leaves its group and joins again instead (``Writer._check_liveness``).

:class:`StallWatch` decides that a partition is stalled when both hold:

- no message of it was delivered for ``seconds`` (sampled: see :meth:`StallWatch.delivered`), and
- the broker, asked then (not the cached figure, which a consumer that does not fetch never updates), has
  records past where the consumer stands (its position, else its committed offset, else the log start),
  and still has a quarter of ``seconds`` later, the consumer standing where it stood.

A batch that fails and is rewound (a registry outage: the loop waits for it by design) is still delivered
each time, so it does not count as a stall; a broker that does not answer the question is an outage, not a
stall, and restarts the clock. What it cannot tell apart is a transaction left open by another producer to
the topic (a read_committed consumer waits at its start for up to that producer's ``transaction.timeout.ms``
even though the high watermark is past it): ``seconds`` must be longer than that (agentgov's own producers:
60 s; the default is 120 s). And Tansu 0.6 answers the log end as the *last batch's first offset* + 1 (five
records in one batch at offsets 0-4: end 1), so a member stalled inside the newest batch is seen only once
another batch is appended.

Example::

    watch = StallWatch(consumer, "scorer", settings.stall_seconds)
    msgs = consumer.consume(...); watch.delivered(msgs)
    watch.check()        # every few seconds: raises ConsumerStalled naming the partitions
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition

from .errors import AgentgovError

log = logging.getLogger(__name__)

EXIT_STALLED = 75
"""A role that ends because a partition stalled exits with this (EX_TEMPFAIL: try again); its supervisor
restarts it."""
SAMPLE_SECONDS = 1.0
"""How often :meth:`StallWatch.delivered` looks at a batch's partitions (a stall is tens of seconds)."""


class ConsumerStalled(AgentgovError):
    """Owned partitions had records waiting and delivered nothing for ``stall_seconds``."""

    reason = "stalled"


class StallWatch:
    """Per owned partition: when a message of it was last delivered (sampled), and whether it is stalled."""

    def __init__(self, consumer: Any, role: str, seconds: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.consumer, self.role, self.seconds, self.clock = consumer, role, seconds, clock
        self.last: dict[tuple[str, int], float] = {}
        self.suspects: dict[tuple[str, int], int] = {}
        """Partitions found waiting once, and where the consumer stood then."""
        self._next_sample = 0.0

    def delivered(self, msgs: Sequence[Message]) -> None:
        """Note the partitions of a consumed batch, at most once per ``SAMPLE_SECONDS``: a partition that is
        being read shows up in many batches a second, a stalled one in none."""
        if not msgs or not self.seconds:
            return
        now = self.clock()
        if now < self._next_sample:
            return
        self._next_sample = now + SAMPLE_SECONDS
        last = self.last
        for msg in msgs:
            last[(msg.topic(), msg.partition())] = now
        if self.suspects:
            for key in [k for k in self.suspects if last.get(k) == now]:
                del self.suspects[key]

    def check(self) -> None:
        """Raise :class:`ConsumerStalled` if an owned partition is stalled (see the module's docstring).

        A partition found waiting is a suspect first, and stalled only if it is still waiting at the same
        place ``seconds / 4`` later: a record produced to an idle partition just before the question is
        waiting for a moment, and is delivered by the next fetch."""
        if not self.seconds:
            return
        now = self.clock()
        assignment = self.consumer.assignment()
        owned = {(tp.topic, tp.partition) for tp in assignment}
        for key in [k for k in self.last if k not in owned]:  # revoked: its clock starts again if it returns
            del self.last[key]
            self.suspects.pop(key, None)
        quiet = [tp for tp in assignment if now - self.last.setdefault((tp.topic, tp.partition), now) >= self.seconds]
        if not quiet:
            return
        try:
            waiting = self._waiting(quiet)
        except KafkaException as exc:  # the broker does not answer: an outage, which the loop rides out
            log.info("liveness check postponed: broker did not answer",
                     extra={"kv": {"role": self.role, "error": str(exc)}})
            for tp in quiet:
                self.last[(tp.topic, tp.partition)] = now
            return
        stalled = {}
        for tp in quiet:
            key = (tp.topic, tp.partition)
            seen = waiting.get(key)
            if seen is None:  # caught up: nothing to deliver is no stall
                self.last[key] = now
                self.suspects.pop(key, None)
            elif self.suspects.get(key) == seen[0]:
                stalled[key] = seen
            else:  # a suspect: asked again in a quarter of the period
                self.suspects[key] = seen[0]
                self.last[key] = now - self.seconds * 0.75
        if stalled:
            parts = [{"topic": t, "partition": p, "at": at, "end": end}
                     for (t, p), (at, end) in sorted(stalled.items())]
            log.error("consumer stalled: records waiting and none delivered; exiting for a fresh member",
                      extra={"kv": {"role": self.role, "seconds": self.seconds, "partitions": parts}})
            raise ConsumerStalled(
                f"{self.role}: {len(parts)} partition(s) with records waiting delivered nothing for "
                f"{self.seconds:g}s: " + ", ".join(f"{x['topic']}[{x['partition']}] at {x['at']} of {x['end']}"
                                                   for x in parts), partitions=parts)

    def _waiting(self, quiet: list[TopicPartition]) -> dict[tuple[str, int], tuple[int, int]]:
        """Of ``quiet``, the partitions with records past where the consumer stands: (where, log end)."""
        at = {(tp.topic, tp.partition): tp.offset for tp in self.consumer.position(quiet)}
        unknown = [TopicPartition(t, p) for (t, p), offset in at.items() if offset < 0]
        if unknown:  # nothing delivered since the assignment: the committed offset is where it stands
            for tp in self.consumer.committed(unknown, timeout=10):
                at[(tp.topic, tp.partition)] = tp.offset
        waiting = {}
        for (topic, partition), offset in at.items():
            low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10,
                                                            cached=False)
            where = offset if offset >= 0 else low
            if high > where:
                waiting[(topic, partition)] = (where, high)
        return waiting
