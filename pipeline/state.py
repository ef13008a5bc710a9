"""Per-partition scoring context, rebuilt from the log.

A scorer keeps, for each partition it owns, the recent past of that partition: events by run, by target
identity and by agent, bounded by an event-time window and a size cap. It is a cache, not state: on
assignment the consumer replays the window before the committed offset (see ``recovery.py``), so any
replica builds the same context for the same event. Runs are the partition key, so a run's whole
history is always local to its partition.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable

from .events import TransitionDict

HISTORY_PER_KEY = 64


class _Index:
    """key -> recent events (oldest first), capped per key and in number of keys (LRU)."""

    __slots__ = ("data", "max_keys")

    def __init__(self, max_keys: int) -> None:
        self.data: OrderedDict[str, deque[TransitionDict]] = OrderedDict()
        self.max_keys = max_keys

    def get(self, key: str | None) -> tuple[TransitionDict, ...]:
        if key is None:
            return ()
        events = self.data.get(key)
        return tuple(events) if events else ()

    def add(self, key: str, ev: TransitionDict) -> None:
        events = self.data.get(key)
        if events is None:
            events = self.data[key] = deque(maxlen=HISTORY_PER_KEY)
            if len(self.data) > self.max_keys:
                self.data.popitem(last=False)
        else:
            self.data.move_to_end(key)
        events.append(ev)


class PartitionContext:
    """The recent past of one partition, as the rules need it."""

    def __init__(self, window_ms: int, max_keys: int = 4000, max_seen: int = 200_000) -> None:
        self.window_ms = window_ms
        self.runs = _Index(max_keys)
        self.targets = _Index(max_keys)
        self.agents = _Index(max_keys)
        self.seen: OrderedDict[str, str] = OrderedDict()
        self.max_seen = max_seen

    def _recent(self, events: tuple[TransitionDict, ...], now_ms: int) -> tuple[TransitionDict, ...]:
        lo = now_ms - self.window_ms
        if not events or events[0]["occurred_at"] >= lo:
            return events
        return tuple(e for e in events if e["occurred_at"] >= lo)

    def run_history(self, ev: TransitionDict) -> tuple[TransitionDict, ...]:
        return self.runs.get(ev["run_id"])

    def target_history(self, ev: TransitionDict) -> tuple[TransitionDict, ...]:
        return self._recent(self.targets.get(ev["target"]["identity_id"]), ev["occurred_at"])

    def agent_history(self, ev: TransitionDict) -> tuple[TransitionDict, ...]:
        return self._recent(self.agents.get(ev["agent"]["agent_id"]), ev["occurred_at"])

    def observe(self, ev: TransitionDict) -> None:
        """Record an event after it was scored (or replayed)."""
        self.runs.add(ev["run_id"], ev)
        self.targets.add(ev["target"]["identity_id"], ev)
        self.agents.add(ev["agent"]["agent_id"], ev)
        event_id = ev["event_id"]
        if event_id not in self.seen:
            self.seen[event_id] = ev["evidence"]["event_hash"]
            if len(self.seen) > self.max_seen:
                self.seen.popitem(last=False)

    def observe_all(self, events: Iterable[TransitionDict]) -> None:
        for ev in events:
            self.observe(ev)
