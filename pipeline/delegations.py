"""The delegation graph: agent-to-agent grants, read whole by every correlator (GlobalKTable-style).

Scorers publish every executed grant by one agent of another agent's access, and every executed revoke of an
agent's access by anyone (the grantor, a clean-up agent, the agent itself: an access is the delegate's, and its
revoke ends every edge that gave it), to the compacted ``agentgov.delegations.v1`` (one record per grantor,
delegate, system and access). Each correlator
follows that topic from its beginning in a background thread, so every replica holds the same graph,
and the rules read it as of the event time of the grant they judge (edges granted later, or revoked
before, do not count).

Example::

    graph = DelegationGraph(settings, serde).start()
    graph.wait_ready(30)
    graph.into("agent-b")        # edges into agent-b, event-time order
    graph.since(0, graph.read)   # every edge, in the order read (an edge read late re-judges grants after it)
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from .errors import RegistryUnavailable
from .events import TransitionDict, identity_key
from .facts import as_event, edge_key
from .followers import follow, refused, take_each
from .limits import Limits, check_fact_time
from .metrics import Metrics
from .scoring.crossrun import FactOrder, fact_order
from .serde import Serde
from .settings import Settings

log = logging.getLogger(__name__)


class DelegationGraph:
    """Follows the delegations topic; ``into`` is safe to call from the correlator loop."""

    def __init__(self, settings: Settings, serde: Serde, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.serde = serde
        self.metrics = metrics
        self.topic = settings.topic_delegations
        self.limits = Limits.from_settings(settings)
        self._into: dict[str, list[tuple[FactOrder, str, TransitionDict]]] = {}
        self._out: dict[str, set[str]] = {}  # grantor -> the agents it granted to (or revoked from)
        self._log: list[TransitionDict] = []  # every edge, in the order read (``since``)
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.position = 0
        """Offset the follower has read the topic up to (transaction markers included)."""

    def into(self, agent: str) -> list[TransitionDict]:
        with self._lock:
            return [e for _, _, e in self._into.get(agent, ())]

    @property
    def read(self) -> int:
        """How many edges the follower has added so far (``since``'s positions)."""
        return len(self._log)

    def since(self, start: int, end: int) -> list[TransitionDict]:
        """The edges added ``start``-th to ``end``-th, in the order read."""
        with self._lock:
            return self._log[start:end]

    def downstream(self, agent: str, hops: int) -> set[str]:
        """``agent`` and every agent it delegated to, directly or through at most ``hops`` edges (any time,
        granted or revoked: a superset, which the rules narrow to the edges live at a grant's time)."""
        with self._lock:
            seen, frontier = {agent}, [agent]
            for _ in range(hops):
                frontier = [d for a in frontier for d in self._out.get(a, ()) if d not in seen]
                if not frontier:
                    break
                seen.update(frontier)
            return seen

    def add(self, fact: dict[str, object]) -> None:
        ev = as_event(fact)
        mark = (ev["event_id"], edge_key(fact))
        with self._lock:
            if mark in self._seen:
                return  # a redelivered record (aborted transaction visible on Tansu, or compaction copy)
            self._seen.add(mark)
            bisect.insort(self._into.setdefault(ev["target"]["identity_id"], []), (fact_order(ev), ev["event_id"], ev),
                          key=lambda t: t[0])
            self._out.setdefault(ev["agent"]["agent_id"], set()).add(ev["target"]["identity_id"])
            behalf = ev["agent"]["on_behalf_of"]
            if behalf is not None:  # an agent acting for a service identity passes on that identity's power too
                self._out.setdefault(behalf, set()).add(ev["target"]["identity_id"])
            if ev["action"] == "add_group_member":  # a group passes on what it is granted to its members
                self._out.setdefault(identity_key(ev["resource"]["resource_id"]), set()).add(
                    ev["target"]["identity_id"])
            self._log.append(ev)

    def take(self, value: bytes, offset: int | None = None) -> bool:
        """Add the edge one record of the topic holds; False (logged) if it holds none."""
        try:
            fact = self.serde.decode(value).record
            # An edge stamped in the future beyond the skew (int64 max: forged) is no edge. No age bound: the
            # topic is compacted, and a delegation granted long ago still delegates.
            check_fact_time(fact["occurred_at"], self.limits, int(time.time() * 1000))
            self.add(fact)
        except RegistryUnavailable:
            raise  # not the record's fault: read again (_step)
        except Exception as exc:  # one record must not stop the follower (followers.py)
            refused("delegations", self.metrics, offset, exc)
            return False
        return True

    def start(self) -> DelegationGraph:
        self._thread = threading.Thread(target=self._follow, name="delegations", daemon=True)
        self._thread.start()
        return self

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def sync(self, high: int, timeout: float) -> bool:
        """Wait until the follower has read the topic up to offset ``high``; False on timeout.

        The correlator calls it before judging by-agent facts: an edge is committed in the scorer's
        transaction before (or with) the facts that complete a laundering chain, so once the follower has
        read up to the end the topic had when those facts were read, the graph holds every edge they need.
        Without it, a fact judged a few milliseconds before the follower reads its edge misses the chain."""
        deadline = time.monotonic() + timeout
        while self.position < high:
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(0.005)
        return True

    def _follow(self) -> None:
        consumer = Consumer(self.settings.kafka_config(**{
            "group.id": f"agentgov-delegations-{uuid.uuid4()}", "enable.auto.commit": False,
            "isolation.level": "read_committed", "fetch.wait.max.ms": self.settings.fetch_wait_max_ms}))
        tp = TopicPartition(self.topic, 0, 0)
        consumer.assign([tp])
        try:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
        except Exception:  # topic not there yet: nothing to catch up with
            high = 0
        if high <= 0:
            self.ready.set()
        try:
            follow("delegations", self.metrics, self._stop, lambda: self._step(consumer, tp, high))
        finally:
            consumer.close()

    def _step(self, consumer: Consumer, tp: TopicPartition, high: int) -> None:
        # The first record as soon as it is there, then what else is (a batch consume would wait out its
        # timeout for a full batch: every edge read 0.2 s late, and every ``sync`` waiting for it).
        first = consumer.poll(0.2)
        msgs = [first, *consumer.consume(500, 0)] if first is not None else []
        take_each(consumer, msgs, self.take)
        # Transaction markers take offsets but are never delivered: ask for the position.
        position = consumer.position([tp])[0].offset
        if position >= 0:
            self.position = position
        if not msgs and not self.ready.is_set() and self.position >= high:
            self.ready.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
