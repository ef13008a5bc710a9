"""Per-partition scoring context, rebuilt from the log.

A scorer keeps, for each partition it owns, the recent past of that partition: events by run, by target
identity and by agent, bounded by an event-time window and a size cap. It is a cache, not state: on
assignment the consumer replays the window before the committed offset (see ``recovery.py``), so any
replica builds the same context for the same event. Runs are the partition key, so a run's whole
history is always local to its partition.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .events import TransitionDict

HISTORY_PER_KEY = 64
EVENT_OVERHEAD_BYTES = 2048
"""Approximate resident size of a decoded event without its variable parts (dict, ~30 short strings)."""


def approx_bytes(ev: TransitionDict) -> int:
    """Approximate resident size of a decoded event: a fixed overhead plus its variable parts (attributes
    and inputs, each string counted at its length plus ~50 bytes of object header). Cheap on purpose."""
    size = EVENT_OVERHEAD_BYTES
    for k, v in ev["attributes"].items():
        size += len(k) + len(v) + 100
    for item in ev["inputs_used"]:
        size += len(item["name"]) + len(item["source"]) + 150
    return size


class _Index:
    """key -> recent events (oldest first), capped per key, in number of keys and in approximate bytes
    (least recently used keys go first)."""

    __slots__ = ("bytes", "data", "evicted", "max_bytes", "max_keys", "sizes")

    def __init__(self, max_keys: int, max_bytes: int | None = None) -> None:
        self.data: OrderedDict[str, deque[TransitionDict]] = OrderedDict()
        self.sizes: dict[str, deque[int]] = {}
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted = 0  # keys dropped by the caps (not by the window)

    def get(self, key: str | None) -> tuple[TransitionDict, ...]:
        if key is None:
            return ()
        events = self.data.get(key)
        return tuple(events) if events else ()

    def add(self, key: str, ev: TransitionDict, size: int) -> None:
        events = self.data.get(key)
        if events is None:
            events = self.data[key] = deque(maxlen=HISTORY_PER_KEY)
            sizes = self.sizes[key] = deque()
            if len(self.data) > self.max_keys:
                self._drop_oldest_key()
        else:
            self.data.move_to_end(key)
            sizes = self.sizes[key]
        if len(sizes) == HISTORY_PER_KEY:
            self.bytes -= sizes.popleft()
        events.append(ev)
        sizes.append(size)
        self.bytes += size
        if self.max_bytes is not None:
            while self.bytes > self.max_bytes and len(self.data) > 1:
                self._drop_oldest_key()

    def _drop_oldest_key(self) -> None:
        key, _ = self.data.popitem(last=False)
        self.evicted += 1
        self.bytes -= sum(self.sizes.pop(key, ()))


class PartitionContext:
    """The recent past of one partition, as the rules need it."""

    def __init__(self, window_ms: int, max_keys: int = 4000, max_seen: int = 200_000,
                 max_bytes: int | None = None) -> None:
        self.window_ms = window_ms
        # An event is held by all three indexes at once; each may account for a third of the budget, so
        # the partition's events stay within ``max_bytes`` (approximately, see approx_bytes).
        per_index = max_bytes // 3 if max_bytes is not None else None
        self.runs = _Index(max_keys, per_index)
        self.targets = _Index(max_keys, per_index)
        self.agents = _Index(max_keys, per_index)
        self.seen: OrderedDict[str, str] = OrderedDict()
        self.max_seen = max_seen
        # Log time (ms) since which every run of the partition is held: 0 = since the log's start, None =
        # unknown. Set by the scorer after its replay; moved forward whenever the caps evict a run.
        self.complete_from_ms: int | None = None
        self._evicted = 0

    def runs_complete(self, log_ms: int) -> bool:
        """True when every run of the partition active over the window before ``log_ms`` is held (or every
        run since the log's start): a run missing from the context then never had a step in that span."""
        if self.runs.evicted != self._evicted:  # runs were dropped by the caps: complete only from now on
            self._evicted = self.runs.evicted
            if self.complete_from_ms is not None:
                self.complete_from_ms = log_ms
        since = self.complete_from_ms
        return since is not None and (since == 0 or (self.window_ms > 0 and log_ms - since >= self.window_ms))

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
        size = approx_bytes(ev)
        self.runs.add(ev["run_id"], ev, size)
        self.targets.add(ev["target"]["identity_id"], ev, size)
        self.agents.add(ev["agent"]["agent_id"], ev, size)
        event_id = ev["event_id"]
        if event_id not in self.seen:
            self.seen[event_id] = ev["evidence"]["event_hash"]
            if len(self.seen) > self.max_seen:
                self.seen.popitem(last=False)

    @property
    def held_bytes(self) -> int:
        """Approximate bytes of the events held (each counted once)."""
        return max(self.runs.bytes, self.targets.bytes, self.agents.bytes)
