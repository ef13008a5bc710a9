"""Per-agent behaviour baselines: aggregated from the audit store, shared through a compacted topic.

The store owner (the writer process) runs :class:`BaselinePublisher` on a schedule: one aggregation
query over ``transitions`` in the baseline window, one JSON record per agent to
``agentgov.baselines.v1`` (compacted, keyed by agent_id). Every scorer runs a :class:`BaselineCache`
that reads that topic from the beginning and keeps following it, so a fresh replica has the same
baselines as an old one, and scorers never need to open the store (chdb is single-process).

Example::

    cache = BaselineCache(settings).start()
    cache.get("agent-jml-01")              # AgentBaseline | None
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from .errors import ValidationError
from .events import identity_key
from .followers import follow, refused, take_each
from .limits import IDENT_MAX_CHARS, TIER_MAX
from .metrics import Metrics
from .scoring.context import AgentBaseline
from .scoring.policy import LoadedPolicy
from .settings import Settings

if TYPE_CHECKING:  # the publisher's, run by the store owner: scorers and correlators never load the driver
    from .sinks.clickhouse import ClickHouseSink
    from .writer import Writer

log = logging.getLogger(__name__)

BASELINE_SQL = """
SELECT
    agent_id,
    uniqMerge(events) AS events,
    groupUniqArrayMerge(actions) AS actions,
    groupUniqArrayMerge(systems) AS systems,
    groupUniqArrayMerge(entitlements) AS entitlements,
    groupUniqArrayMerge(inputs) AS inputs,
    max(max_tier) AS max_tier,
    uniqIfMerge(grants) / (dateDiff('hour', min(hour), max(hour)) + 1) AS grants_per_hour,
    uniqMapMerge(policy_refs) AS refs,
    arraySum(mapValues(mapFilter((ref, n) -> NOT has({approved:Array(String)}, ref), refs)))
        / greatest(1, arraySum(mapValues(refs))) AS stale_policy_share
FROM {db}.agent_hourly
WHERE hour >= toStartOfHour(now() - toIntervalSecond({window:UInt32}))
GROUP BY agent_id
"""
"""Reads the per-agent hourly rollup (migration 002), so a refresh costs agents x hours, not events."""


INT64_MAX = 2**63 - 1
BASELINE_MAX_FUTURE_MS = 300_000
"""Default for how far ahead of the follower's clock a baseline's ``as_of_ms`` may be (the events' future skew,
``max_future_skew_seconds``; a :class:`BaselineCache` takes its settings' value)."""


def baselines_topic(settings: Settings) -> str:
    return settings.topic_baselines


def to_json(b: AgentBaseline) -> bytes:
    doc: dict[str, Any] = {
        "agent_id": b.agent_id, "events": b.events, "actions": sorted(b.actions), "systems": sorted(b.systems),
        "entitlements": sorted(b.entitlements), "inputs": sorted(b.inputs), "max_tier": b.max_tier,
        "grants_per_hour": b.grants_per_hour, "stale_policy_share": b.stale_policy_share, "as_of_ms": b.as_of_ms,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _int(doc: dict[str, Any], field: str, low: int, high: int) -> int:
    value = doc[field]
    if type(value) is not int or not low <= value <= high:  # bool is an int, and 1e400 is a float: neither
        raise ValidationError(f"{field}={str(value)[:40]} is not an integer in {low}..{high}",
                              reason="invalid_value", field=field)
    return value


def _float(doc: dict[str, Any], field: str) -> float:
    value = doc[field]
    if type(value) not in (int, float) or not 0.0 <= value < math.inf:  # NaN fails the comparison too
        raise ValidationError(f"{field}={str(value)[:40]} is not a finite number >= 0", reason="invalid_value",
                              field=field)
    return float(value)


def _terms(doc: dict[str, Any], field: str) -> frozenset[str]:
    value = doc[field]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{field} is not a list of strings", reason="invalid_value", field=field)
    return frozenset(value)


def from_json(data: bytes, now_ms: int | None = None, max_future_ms: int = BASELINE_MAX_FUTURE_MS
              ) -> AgentBaseline:
    """One record of the baselines topic; :class:`ValidationError` naming the field for anything the
    publisher would not have written: other types (``agent_id`` an integer), numbers out of range
    (``as_of_ms`` 1e400), or, given ``now_ms``, an ``as_of_ms`` more than ``max_future_ms`` ahead of it (a
    baseline from year 9999 made every real one look stale, and eviction dropped them all)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValidationError(f"not JSON: {str(exc)[:200]}", reason="malformed") from exc
    if not isinstance(doc, dict):
        raise ValidationError("not a JSON object", reason="malformed")
    try:
        agent_id = doc["agent_id"]
        if not isinstance(agent_id, str) or not 0 < len(agent_id) <= IDENT_MAX_CHARS:
            raise ValidationError(f"agent_id is not a string of 1..{IDENT_MAX_CHARS} characters",
                                  reason="invalid_value", field="agent_id")
        latest = INT64_MAX if now_ms is None else now_ms + max_future_ms
        baseline = AgentBaseline(
            agent_id=agent_id, events=_int(doc, "events", 0, INT64_MAX), actions=_terms(doc, "actions"),
            systems=_terms(doc, "systems"), entitlements=_terms(doc, "entitlements"), inputs=_terms(doc, "inputs"),
            max_tier=_int(doc, "max_tier", 0, TIER_MAX), grants_per_hour=_float(doc, "grants_per_hour"),
            stale_policy_share=_float(doc, "stale_policy_share"), as_of_ms=_int(doc, "as_of_ms", 0, latest),
        )
    except KeyError as exc:
        raise ValidationError(f"{exc.args[0]} missing", reason="invalid_value", field=str(exc.args[0])) from exc
    return baseline


def compute(sink: ClickHouseSink, *, window_seconds: int, approved: list[str], now_ms: int) -> list[AgentBaseline]:
    """Aggregate every agent's baseline over the window. ``approved`` holds ``policy_id@version`` strings."""
    rows = sink.query(BASELINE_SQL, {"window": window_seconds, "approved": approved})
    return [
        AgentBaseline(
            agent_id=r["agent_id"], events=int(r["events"]), actions=frozenset(r["actions"]),
            systems=frozenset(r["systems"]), entitlements=frozenset(r["entitlements"]),
            inputs=frozenset(r["inputs"]), max_tier=int(r["max_tier"]),
            grants_per_hour=float(r["grants_per_hour"]), stale_policy_share=float(r["stale_policy_share"]),
            as_of_ms=now_ms,
        )
        for r in rows
    ]


def merged(key: str, baselines: list[AgentBaseline]) -> AgentBaseline:
    """One baseline for the spellings of one identity: counts and rates added (each event has one spelling),
    the term sets joined, the stale-policy share weighted by events."""
    events = sum(b.events for b in baselines)
    return AgentBaseline(
        agent_id=key, events=events, actions=frozenset().union(*(b.actions for b in baselines)),
        systems=frozenset().union(*(b.systems for b in baselines)),
        entitlements=frozenset().union(*(b.entitlements for b in baselines)),
        inputs=frozenset().union(*(b.inputs for b in baselines)), max_tier=max(b.max_tier for b in baselines),
        grants_per_hour=sum(b.grants_per_hour for b in baselines),
        stale_policy_share=sum(b.stale_policy_share * b.events for b in baselines) / max(1, events),
        as_of_ms=max(b.as_of_ms for b in baselines))


def attach(writer: Writer, settings: Settings, sink: ClickHouseSink, policy: LoadedPolicy) -> BaselinePublisher:
    """Schedule baseline refreshes on the writer loop (the thread that owns the store's client)."""
    publisher = BaselinePublisher(
        settings, sink, window_seconds=policy.governance.drift.baseline_window_seconds,
        approved=policy.governance.approved_policy_refs(), interval=settings.baseline_refresh_seconds)
    writer.add_task(settings.baseline_refresh_seconds, publisher)
    return publisher


class BaselinePublisher:
    """Recomputes baselines every ``interval`` seconds and publishes them (run by the store owner)."""

    def __init__(self, settings: Settings, sink: ClickHouseSink, *, window_seconds: int, approved: list[str],
                 interval: float = 60.0) -> None:
        self.settings, self.sink = settings, sink
        self.window_seconds, self.approved = window_seconds, approved
        self.interval = interval
        self.topic = baselines_topic(settings)
        self.producer = Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all",
                                                          "message.max.bytes": settings.max_message_bytes}))
        self.published = 0
        self.skipped = 0

    def publish_once(self) -> int:
        """One refresh. Call it from the thread that owns the sink's client (the writer loop)."""
        now_ms = int(time.time() * 1000)
        baselines = compute(self.sink, window_seconds=self.window_seconds, approved=self.approved, now_ms=now_ms)
        sent = 0
        for b in baselines:
            try:
                self.producer.produce(self.topic, to_json(b), key=b.agent_id.encode())
                sent += 1
            except KafkaException as exc:  # one agent's baseline too large: skip it, not the whole refresh
                self.skipped += 1
                log.warning("baseline not published", extra={"kv": {"agent_id": b.agent_id[:128],
                                                                     "error": str(exc)}})
        self.producer.flush(30)
        self.published += 1
        log.info("baselines published", extra={"kv": {"agents": sent, "skipped": len(baselines) - sent}})
        return sent

    def __call__(self) -> None:
        try:
            self.publish_once()
        except Exception as exc:  # the store may be failing; the writer reports that
            log.warning("baseline refresh failed", extra={"kv": {"error": str(exc)}})


class BaselineCache:
    """Follows the baselines topic from its start; ``get`` is lock-free for the scoring loop."""

    max_agents = 100_000
    """Baselines kept at most; the oldest (by ``as_of_ms``) go first."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topic = baselines_topic(settings)
        self.data: dict[str, AgentBaseline] = {}
        self.spellings: dict[str, frozenset[str]] = {}
        """Per identity key (:func:`~pipeline.events.identity_key`), the agent ids in ``data`` that fold to it."""
        # A baseline not refreshed for this long belongs to an agent that left the baseline window.
        self.max_age_ms = int(max(3 * settings.baseline_refresh_seconds, 600) * 1000)
        self.as_of_ms = 0
        self.max_future_ms = settings.max_future_skew_seconds * 1000
        """A baseline stamped further ahead of this process's clock is refused (the events' skew)."""
        self._next_evict = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, agent_id: str) -> AgentBaseline | None:
        return self.data.get(agent_id)

    def for_identity(self, key: str) -> AgentBaseline | None:
        """The baseline of an identity key (what the correlator keys agents by): the baseline of its one agent
        id, or all its spellings' merged (:func:`merged`), so an agent cannot start afresh under a new case."""
        ids = self.spellings.get(key)
        if ids is None:
            return self.data.get(key)
        found = [b for b in (self.data.get(i) for i in ids) if b is not None]
        return found[0] if len(found) == 1 else merged(key, found) if found else None

    def _spelt(self, agent_id: str) -> None:
        key = identity_key(agent_id)
        ids = self.spellings.get(key, frozenset())
        if agent_id not in ids:
            self.spellings[key] = ids | {agent_id}

    def start(self) -> BaselineCache:
        self._thread = threading.Thread(target=self._follow, name="baselines", daemon=True)
        self._thread.start()
        return self

    def add(self, value: bytes, offset: int | None = None) -> bool:
        """Take one record of the topic; False if it was refused (logged, counted in
        ``agentgov_follower_records_refused_total{follower="baselines"}``, skipped)."""
        try:
            b = from_json(value, int(time.time() * 1000), self.max_future_ms)
            self._spelt(b.agent_id)
        except Exception as exc:  # one record must not stop the follower (followers.py)
            refused("baselines", self.metrics, offset, exc)
            return False
        self.data[b.agent_id] = b
        self.as_of_ms = max(self.as_of_ms, b.as_of_ms)
        return True

    def _follow(self) -> None:
        consumer = Consumer(self.settings.kafka_config(**{
            "group.id": f"agentgov-baselines-{uuid.uuid4()}", "enable.auto.commit": False,
            "session.timeout.ms": self.settings.session_timeout_ms}))
        consumer.assign([TopicPartition(self.topic, 0, 0)])  # OFFSET_BEGINNING semantics via offset 0
        try:
            follow("baselines", self.metrics, self._stop, lambda: self._step(consumer))
        finally:
            consumer.close()

    def _step(self, consumer: Consumer) -> None:
        take_each(consumer, consumer.consume(500, 0.5), self.add)
        if time.monotonic() >= self._next_evict:
            self._next_evict = time.monotonic() + 10.0
            self.evict()
        if self.metrics is not None and self.as_of_ms:
            self.metrics.baseline_age.set(max(0.0, time.time() - self.as_of_ms / 1000))

    def evict(self) -> int:
        """Drop baselines the publisher stopped refreshing, and the oldest beyond ``max_agents``."""
        horizon = self.as_of_ms - self.max_age_ms
        stale = [a for a, b in self.data.items() if b.as_of_ms < horizon]
        excess = len(self.data) - len(stale) - self.max_agents
        if excess > 0:
            kept = sorted((b.as_of_ms, a) for a, b in self.data.items() if b.as_of_ms >= horizon)
            stale += [a for _, a in kept[:excess]]
        data = dict(self.data)  # swap, so get() from the scoring thread never sees a dict mid-change
        for agent in stale:
            data.pop(agent, None)
        if stale:
            self.data = data
            spellings: dict[str, frozenset[str]] = {}
            for agent in data:
                spellings[identity_key(agent)] = spellings.get(identity_key(agent), frozenset()) | {agent}
            self.spellings = spellings
        return len(stale)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
