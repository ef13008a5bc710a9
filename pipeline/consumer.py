"""The scoring consumer: read transitions, decode, score, publish assessments, exactly once within Kafka.

Each batch is one Kafka transaction holding the assessments, the dead letters and the consumed
offsets (the loop and checkpoint in ``loop.py`` and ``checkpoint.py``), so a crash at any point either
publishes all of a batch's outputs with its offsets or none of them. The scorer keeps no durable state:
on assignment it replays the recent past of each partition to rebuild its context (``recovery.py``
into ``state.py``).

Example::

    scorer = Scorer(settings, Metrics(), load_policy(settings.policy_file))
    scorer.run(stop)                          # until ``stop`` (a threading.Event) is set
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from . import __version__
from .assessment import AssessmentEncoder
from .deadletters import dead_letter, dlq_headers, header
from .errors import DeadLetter, RegistryUnavailable
from .events import GRANTS, TransitionDict, check_values
from .facts import FACT, FactEmitter, check_fact_topics
from .limits import Limits
from .loop import TransactionalLoop, record_lag
from .metrics import Metrics
from .policy_watch import PolicyWatcher
from .recovery import replay
from .risk_exceptions import ExceptionIndex, apply
from .schemas import ASSESSMENT, SchemaSet
from .scoring.catalogue import CATALOGUE, ESCALATION_PATTERNS
from .scoring.context import AgentBaseline, ScoringContext, entitlements_from_history
from .scoring.engine import Scored, score
from .scoring.policy import LoadedPolicy
from .serde import Decoded, Serde, make_registry
from .settings import Settings
from .state import PartitionContext

log = logging.getLogger(__name__)

__all__ = ["Scorer", "dlq_headers", "record_lag"]  # the last two moved; re-exported for old imports

Baselines = Callable[[str], AgentBaseline | None]

# Produce errors that belong to one record (its size or content), not to the broker or the network: a
# record that fails so is dead-lettered on the batch's replay instead of failing the batch forever.
RECORD_ERRORS = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_RECORD,
                           KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE})


class UnproducibleRecord(DeadLetter):
    """The scorer's output for this event (assessment or dead letter) was refused by the producer or broker."""

    reason = "unproducible"


class Scorer(TransactionalLoop):
    """Stateless scoring consumer. Scale out by running more of them in the same group."""

    role = "scorer"

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        policy: LoadedPolicy,
        *,
        baselines: Baselines | None = None,
        exceptions: Callable[[], ExceptionIndex] | None = None,
        registry: Any = None,
    ) -> None:
        # (partition, offset) of input records whose output the broker refused -> times refused.
        self._poison: dict[tuple[int, int], int] = {}
        super().__init__(settings, metrics, group=settings.scorer_group, topics=[settings.topic_transitions],
                         consumer_extra={"fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 4194304},
                         producer_extra={"on_delivery": self._on_delivery})
        self.policy = policy
        self.baselines: Baselines = baselines or (lambda agent_id: None)
        empty = ExceptionIndex()
        self.exceptions: Callable[[], ExceptionIndex] = exceptions or (lambda: empty)
        schemas = SchemaSet.load()
        registry = registry if registry is not None else make_registry(settings)
        self.limits = Limits.from_settings(settings)
        self.serde = Serde(schemas, registry, subject=f"{settings.topic_transitions}-value",
                           max_bytes=self.limits.event_bytes)
        self.encoder = AssessmentEncoder(
            schemas, Serde(schemas, registry, record=ASSESSMENT, subject=f"{settings.topic_assessments}-value"),
            __version__, policy)
        self.facts = (FactEmitter(settings, Serde(schemas, registry, record=FACT,
                                                  subject=f"{settings.topic_facts_by_target}-value"))
                      if settings.access_facts else None)
        if self.facts is not None:
            check_fact_topics(settings, self.consumer.list_topics(timeout=30).topics)
        self.signing_keys = {k: v.get_secret_value().encode() for k, v in settings.signing_keys.items()}
        self.key_agents = {k: tuple(v) for k, v in settings.signing_key_agents.items()}
        self.window_ms = settings.context_window_seconds * 1000
        self.contexts: dict[int, PartitionContext] = {}
        self.metrics.policy_info.labels(role=self.role).info(
            {"version": policy.version, "sha256": policy.sha256})
        # Every finding series exists from start-up at 0, so increase() sees a scorer's first finding.
        for spec in CATALOGUE.values():
            self.metrics.findings.labels(code=spec.code, severity=spec.severity.value, category=spec.category.value)
        for reason in ("oversized", "produce_failed"):
            self.metrics.poison.labels(role=self.role, reason=reason)
        self._watcher = PolicyWatcher(settings.policy_file, policy, settings.policy_reload_seconds)

    # -- policy -------------------------------------------------------------------------------
    def set_policy(self, policy: LoadedPolicy) -> None:
        """Swap the governance policy between batches; nothing in flight is lost."""
        self.policy = policy
        self.encoder.set_policy(policy)
        self.metrics.policy_info.labels(role=self.role).info({"version": policy.version, "sha256": policy.sha256})
        log.info("policy loaded", extra={"kv": {"version": policy.version, "sha256": policy.sha256[:12]}})

    def tick(self) -> None:
        changed = self._watcher.poll()
        if changed is not None:
            self.set_policy(changed)

    def _new_context(self) -> PartitionContext:
        return PartitionContext(self.window_ms, max_keys=self.settings.context_max_keys,
                                max_bytes=self.settings.context_max_bytes)

    # -- context: rebuilt by replay -----------------------------------------------------------
    def rebuild(self, tp: TopicPartition) -> None:
        ctx = self.contexts[tp.partition] = self._new_context()
        if tp.offset > 0:
            replayed = replay(self.settings, tp, self.window_ms, self._decode_quiet, ctx.observe)
            log.info("context rebuilt", extra={"kv": {"partition": tp.partition, "until": tp.offset,
                                                      "events": replayed}})

    def forget(self, tp: TopicPartition) -> None:
        self.contexts.pop(tp.partition, None)

    def _decode_quiet(self, msg: Message) -> TransitionDict | None:
        try:
            decoded = self.serde.decode(msg.value())
            check_values(decoded.record, now_ms=decoded.record["occurred_at"], max_future_ms=0)
        except DeadLetter:
            return None
        except RegistryUnavailable:  # context only: the event itself is scored when the registry answers
            log.warning("registry unreachable during replay; event left out of the context",
                        extra={"kv": {"partition": msg.partition(), "offset": msg.offset()}})
            return None
        return decoded.record

    # -- one batch, inside the checkpoint's transaction ---------------------------------------
    def housekeeping(self) -> None:
        """Expiry of old escalation-chain series."""
        self.metrics.escalation_ring.expire(time.time() - ESCALATION_SERIES_TTL)

    def handle(self, msgs: list[Message]) -> _BatchStats:
        return self._score_batch(msgs)

    def account(self, tally: _BatchStats, msgs: list[Message]) -> None:
        self._count(tally)
        if self._poison:  # committed: those inputs are dead-lettered for good
            for msg in msgs:
                self._poison.pop((msg.partition(), msg.offset()), None)

    def _score_batch(self, msgs: list[Message]) -> _BatchStats:
        stats = _BatchStats()
        now_ms = int(time.time() * 1000)
        limits = self.limits
        produce = self.producer.produce
        assessments = self.settings.topic_assessments
        policy, keys, require = self.policy, self.signing_keys, self.settings.require_signatures
        excepted = self.exceptions()  # one index per batch: every event of it sees the same versions
        baselines, facts = self.baselines, self.facts
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error", extra={"kv": {"error": str(err)}})
                continue
            stats.consumed += 1
            strikes = self._poison.get((msg.partition(), msg.offset())) if self._poison else None
            if strikes:  # its output was refused on an earlier try: dead-letter it, without payload if need be
                refused = UnproducibleRecord("the broker refused this event's output record")
                self._send_dead(msg, refused, refused.reason, stats, payload=strikes < 2)
                continue
            try:
                decoded: Decoded = self.serde.decode(msg.value())
                ev = decoded.record
                check_values(ev, now_ms=now_ms, limits=limits)
            except DeadLetter as exc:
                self._send_dead(msg, exc, exc.reason, stats)
                continue
            pctx = self.contexts.get(msg.partition())
            if pctx is None:  # assignment raced; build on the fly
                pctx = self.contexts[msg.partition()] = self._new_context()
            target_history = pctx.target_history(ev)
            # Only a grant can complete a separation-of-duties pair: derive holdings just for those.
            held = (entitlements_from_history(target_history)
                    if ev["action"] in GRANTS and ev["decision"]["outcome"] == "granted" else frozenset())
            ctx = ScoringContext(
                policy=policy,
                run_history=pctx.run_history(ev),
                target_history=target_history,
                target_entitlements=held,
                agent_history=pctx.agent_history(ev),
                baseline=baselines(ev["agent"]["agent_id"]),
                seen_event_hashes=pctx.seen,
                signing_keys=keys,
                require_signatures=require,
                key_agents=self.key_agents,
            )
            try:
                scored = apply(score(ev, ctx), ev, excepted)
                value = self.encoder.encode(decoded, scored, msg.partition(), msg.offset(), now_ms)
            except RegistryUnavailable:  # registering the assessment schema: wait for the registry
                raise
            except Exception as exc:  # a rule bug must not stop the pipeline or lose the event
                log.exception("scoring failed", extra={"kv": {"event_id": ev.get("event_id")}})
                self._send_dead(msg, exc, "internal", stats)
                continue
            try:
                produce(assessments, value, key=ev["event_id"].encode(),
                        headers=[("occurred_at", str(ev["occurred_at"]).encode()),
                                 ("agentgov.source.partition", str(msg.partition()).encode()),
                                 ("agentgov.source.offset", str(msg.offset()).encode())])
            except KafkaException as exc:  # refused locally (e.g. MSG_SIZE_TOO_LARGE): this record only
                stats.poison["oversized"] += 1
                self._send_dead(msg, exc, "oversized", stats)
                continue
            if facts is not None:
                facts.emit(produce, ev, msg.partition(), msg.offset())
            pctx.observe(ev)
            stats.add(ev, scored, now_ms)
        return stats

    def _send_dead(self, msg: Message, exc: BaseException, reason: str, stats: _BatchStats, *,
                   payload: bool = True) -> None:
        """Dead-letter ``msg`` in the open transaction; the payload is cut to fit (see deadletters.py)."""
        value, key, headers = dead_letter(msg, exc, reason, self.limits, payload=payload)
        try:
            self.producer.produce(self.settings.topic_dlq, value, key=key, headers=headers)
        except KafkaException:  # even the cut payload is refused: the headers alone still say what happened
            value, key, headers = dead_letter(msg, exc, reason, self.limits, payload=False)
            self.producer.produce(self.settings.topic_dlq, value, key=key, headers=headers)
        stats.dead[reason] += 1

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """Remember the input behind an output the broker refused for the record's own sake, so the
        replay after the abort dead-letters that input instead of failing the same batch forever."""
        if err is None or err.code() not in RECORD_ERRORS:
            return
        partition = header(msg.headers(), "agentgov.source.partition")
        offset = header(msg.headers(), "agentgov.source.offset")
        if partition is None or offset is None:
            return
        source = (int(partition), int(offset))
        self._poison[source] = self._poison.get(source, 0) + 1
        self.metrics.poison.labels(role=self.role, reason="produce_failed").inc()
        log.error("output record refused; its input will be dead-lettered",
                  extra={"kv": {"topic": msg.topic(), "partition": source[0], "offset": source[1],
                                "error": err.str()}})

    def _count(self, stats: _BatchStats) -> None:
        m = self.metrics
        m.events_consumed.inc(stats.consumed)
        for (action, outcome), n in stats.transitions.items():
            m.transitions.labels(action=action, outcome=outcome).inc(n)
        for level, n in stats.levels.items():
            m.assessments.labels(risk_level=level).inc(n)
        for (code, sev, cat), n in stats.findings.items():
            m.findings.labels(code=code, severity=sev, category=cat).inc(n)
        for (code, sev), n in stats.excepted.items():
            m.findings_excepted.labels(code=code, severity=sev).inc(n)
        for reason, n in stats.dead.items():
            m.dead_letters.labels(reason=reason).inc(n)
        for reason, n in stats.poison.items():
            m.poison.labels(role=self.role, reason=reason).inc(n)
        for value in stats.scores:
            m.risk_score.observe(value)
        for lat in stats.latencies:
            m.event_to_scored.observe(lat)
        now = time.time()
        for pattern, agent_id, run_id in stats.escalations:
            m.escalations.labels(pattern=pattern).inc()
            m.escalation_ring.set((pattern, agent_id, run_id), now)
        if stats.escalations:
            log.warning("hidden escalation detected", extra={"kv": {"chains": stats.escalations}})

ESCALATION_CATEGORY = "escalation"
ESCALATION_SERIES_TTL = 900.0  # seconds a detected chain stays on /metrics (the page's window)


class _BatchStats:
    """Per-batch tallies, folded into Prometheus once per batch (cheaper than per-event label lookups)."""

    __slots__ = ("consumed", "dead", "escalations", "excepted", "findings", "latencies", "levels", "poison", "scores",
                 "transitions")

    def __init__(self) -> None:
        self.consumed = 0
        self.transitions: Counter[tuple[str, str]] = Counter()
        self.levels: Counter[str] = Counter()
        self.findings: Counter[tuple[str, str, str]] = Counter()
        self.excepted: Counter[tuple[str, str]] = Counter()
        self.dead: Counter[str] = Counter()
        self.poison: Counter[str] = Counter()
        self.scores: list[int] = []
        self.latencies: list[float] = []
        self.escalations: list[tuple[str, str, str]] = []

    def add(self, ev: TransitionDict, scored: Scored, now_ms: int) -> None:
        self.transitions[(ev["action"], ev["decision"]["outcome"])] += 1
        self.levels[scored.risk_level] += 1
        self.scores.append(scored.risk_score)
        self.latencies.append(max(0.0, (now_ms - ev["occurred_at"]) / 1000))
        for f in scored.findings:
            if f.exception_id is not None:  # covered by an approved exception: stored, but never pages
                self.excepted[(f.code, f.severity.value)] += 1
                continue
            self.findings[(f.code, f.severity.value, f.category.value)] += 1
            if f.category.value == ESCALATION_CATEGORY:
                pattern = ESCALATION_PATTERNS.get(f.code, f.code)
                self.escalations.append((pattern, ev["agent"]["agent_id"], ev["run_id"]))
