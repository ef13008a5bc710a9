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
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from . import __version__
from .assessment import AssessmentEncoder, assessment_headers
from .deadletters import RECORD_ERRORS, dead_letter, dlq_headers
from .errors import DeadLetter, RegistryUnavailable
from .events import ACCESS_CHANGES, GRANTS, TransitionDict, check_values
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



REPLAY_MAX_EVENTS = 200_000  # messages a context rebuild replays at most (recovery.replay)

# What the broker refused of an input's outputs (Scorer._refused).
SUSPECT = 1       # refused in a request with other records: perhaps only a neighbour's fault
REFUSED = 2       # refused alone: dead-letter the input (with its payload)
DEAD_REFUSED = 3  # its dead letter was refused alone too: dead-letter it without payload


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
        # (partition, offset) of input records whose output the broker refused -> SUSPECT, REFUSED or
        # DEAD_REFUSED (and why); kept until the batch holding the input commits.
        self._refused: dict[tuple[int, int], int] = {}
        self._refusals: dict[tuple[int, int], str] = {}
        self._isolated: tuple[int, int] | None = None  # the input whose outputs are being produced alone
        self._replay_gap = False  # a rebuild left an event out of the context (registry unreachable)
        super().__init__(settings, metrics, group=settings.scorer_group, topics=[settings.topic_transitions],
                         consumer_extra={"fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 4194304})
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
        self.backdated_ms = int(settings.backdated_hours * 3_600_000)
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
        if tp.offset <= 0:  # nothing committed: the partition is read from its start
            ctx.complete_from_ms = 0
            return
        span: list[tuple[int, int]] = []  # (offset, log time) of the first and the last message replayed

        def decode(msg: Message) -> TransitionDict | None:
            seen = (msg.offset(), msg.timestamp()[1])
            if span:
                span[1:] = [seen]
            else:
                span.append(seen)
            return self._decode_quiet(msg)

        self._replay_gap = False
        replayed = replay(self.settings, tp, self.window_ms, decode, ctx.observe, max_events=REPLAY_MAX_EVENTS)
        # Read up to the committed offset, nothing left out: complete from the replay's start.
        if span and span[-1][0] == tp.offset - 1 and not self._replay_gap:
            (first, first_ms), (_, last_ms) = span[0], span[-1]
            reached_window = self.window_ms > 0 and tp.offset - first < REPLAY_MAX_EVENTS
            ctx.complete_from_ms = 0 if first == 0 else (last_ms - self.window_ms if reached_window else first_ms)
        log.info("context rebuilt", extra={"kv": {"partition": tp.partition, "until": tp.offset,
                                                  "events": replayed}})

    def forget(self, tp: TopicPartition) -> None:
        self.contexts.pop(tp.partition, None)
        for source in [s for s in self._refused if s[0] == tp.partition]:  # its next owner learns them anew
            self._refused.pop(source, None)
            self._refusals.pop(source, None)

    def _decode_quiet(self, msg: Message) -> TransitionDict | None:
        """An event of the replayed log as the live path judged it, or None for one it dead-lettered. Its time
        is checked against the record's log time, the nearest the log keeps to when it was scored: an event
        stamped too far ahead was dead-lettered (``invalid_value``), and admitted to the rebuilt context it
        made its own republished copy (``agentgov dlq republish``, once its time has come) a replay."""
        try:
            decoded = self.serde.decode(msg.value())
            log_ms = msg.timestamp()[1]
            check_values(decoded.record, now_ms=log_ms if log_ms > 0 else decoded.record["occurred_at"],
                         limits=self.limits)
        except DeadLetter:
            return None
        except RegistryUnavailable:  # context only: the event itself is scored when the registry answers
            self._replay_gap = True
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
        if self._refused:  # committed: those inputs are stored or dead-lettered for good
            for msg in msgs:
                self._refused.pop((msg.partition(), msg.offset()), None)
                self._refusals.pop((msg.partition(), msg.offset()), None)

    def _score_batch(self, msgs: list[Message]) -> _BatchStats:
        """Score the batch, then produce its outputs: the transaction is open on the output partitions only
        from the first output to the commit, not for the whole batch (see :meth:`_score_one`)."""
        stats = _BatchStats()
        batch = _Batch(self, int(time.time() * 1000))
        outputs: list[Callable[[], None]] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error", extra={"kv": {"error": str(err)}})
                continue
            stats.consumed += 1
            refused = self._refused.get((msg.partition(), msg.offset())) if self._refused else None
            if refused is None:
                outputs.append(self._score_one(msg, batch, stats))
            elif refused >= REFUSED:  # its own output was refused alone: dead-letter it, without payload if need be
                exc = UnproducibleRecord(self._refusals.get((msg.partition(), msg.offset()),
                                                            "the broker refused this event's output record"))
                outputs.append(partial(self._alone, msg, partial(self._send_dead, msg, exc, exc.reason, stats,
                                                                 payload=refused < DEAD_REFUSED)))
                stats.poison["produce_failed"] += 1
            else:  # refused with others in one request: produce its outputs alone to learn whose fault it was
                outputs.append(partial(self._alone, msg, self._score_one(msg, batch, stats)))
        for produce in outputs:  # in input order
            produce()
        return stats

    def _alone(self, msg: Message, produce_outputs: Callable[[], None]) -> None:
        """Produce one input's outputs in requests of their own (flushed before and after), so a refusal
        names this input alone; a refusal aborts the batch at once."""
        flush = self.producer.flush
        if flush(30) or self.checkpoint.replace_after_abort:
            raise KafkaException(KafkaError(KafkaError._FAIL, "an output record was refused"))
        self._isolated = (msg.partition(), msg.offset())
        try:
            produce_outputs()
            left = flush(30)
        finally:
            self._isolated = None
        if left or self.checkpoint.replace_after_abort:
            raise KafkaException(KafkaError(KafkaError._FAIL, "an output record was refused"))

    def _score_one(self, msg: Message, batch: _Batch, stats: _BatchStats) -> Callable[[], None]:
        """Score one input against its partition's context (which then holds it, for the batch's later inputs)
        and answer what produces its outputs. The batch produces them all once every input is scored: a
        transaction is open on a partition from its first record there to its commit, and a read_committed
        reader sees nothing past an open transaction. Produced as scored, the scorers' overlapping batches
        kept the writer and the correlators waiting for the whole batch (on Tansu 0.6, which shows such a
        reader nothing on a partition while any transaction is open on it, for as long as two scorers'
        batches kept overlapping: docs/performance.md, session 15)."""
        now_ms = batch.now_ms
        try:
            decoded: Decoded = self.serde.decode(msg.value())
            ev = decoded.record
            check_values(ev, now_ms=now_ms, limits=self.limits)
        except DeadLetter as exc:
            return partial(self._send_dead, msg, exc, exc.reason, stats)
        pctx = self.contexts.get(msg.partition())
        if pctx is None:  # assignment raced; build on the fly
            pctx = self.contexts[msg.partition()] = self._new_context()
        target_history = pctx.target_history(ev)
        # Only a grant can complete a separation-of-duties pair: derive holdings just for those.
        held = (entitlements_from_history(target_history)
                if ev["action"] in GRANTS and ev["decision"]["outcome"] == "granted" else frozenset())
        ctx = ScoringContext(
            policy=batch.policy,
            run_history=pctx.run_history(ev),
            target_history=target_history,
            target_entitlements=held,
            agent_history=pctx.agent_history(ev),
            baseline=self.baselines(ev["agent"]["agent_id"]),
            seen_event_hashes=pctx.seen,
            signing_keys=batch.keys,
            require_signatures=batch.require,
            key_agents=self.key_agents,
            runs_complete=pctx.runs_complete(log_ms if (log_ms := msg.timestamp()[1]) > 0 else now_ms),
        )
        try:
            scored = apply(score(ev, ctx), ev, batch.excepted, log_ms)
            value, digest = self.encoder.encode_digested(decoded, scored, msg.partition(), msg.offset(), now_ms)
        except RegistryUnavailable:  # registering the assessment schema: wait for the registry
            raise
        except Exception as exc:  # a rule bug must not stop the pipeline or lose the event
            log.exception("scoring failed", extra={"kv": {"event_id": ev.get("event_id")}})
            return partial(self._send_dead, msg, exc, "internal", stats)
        facts = None if _copy_seen(ev, ctx) else self.facts
        pctx.observe(ev)
        return partial(self._publish, msg, ev, scored, value, digest, facts, stats, now_ms)

    def _publish(self, msg: Message, ev: TransitionDict, scored: Scored, value: bytes, digest: str,
                 facts: FactEmitter | None, stats: _BatchStats, now_ms: int) -> None:
        """Produce one scored input's assessment and (through ``facts``, unless None) its access facts; an
        assessment refused locally (its size) dead-letters the input instead. The headers name the input
        record and the digest of its content (the writer tells a redelivery from a rewrite by both)."""
        report = partial(self._on_delivery, (msg.partition(), msg.offset()))
        try:
            self.producer.produce(self.settings.topic_assessments, value, key=ev["event_id"].encode(),
                                  on_delivery=report,
                                  headers=assessment_headers(ev, msg.partition(), msg.offset(), digest))
        except KafkaException as exc:  # refused locally (MSG_SIZE_TOO_LARGE): this record only
            if exc.args[0].code() not in RECORD_ERRORS:
                raise  # e.g. _STATE: the transaction already failed; abort it
            stats.poison["oversized"] += 1
            self._send_dead(msg, exc, "oversized", stats)
            return
        if facts is not None:
            # with the codes it raised: the correlator leaves a chain to this scorer only if it reported it here
            facts.emit(partial(self.producer.produce, on_delivery=report), ev, msg.partition(), msg.offset(),
                       sorted({f.code for f in scored.findings}))
        stats.add(ev, scored, now_ms)
        if backdated(ev, msg.timestamp()[1], self.backdated_ms):
            stats.backdated.append((ev["event_id"], ev["agent"]["agent_id"]))

    def _send_dead(self, msg: Message, exc: BaseException, reason: str, stats: _BatchStats, *,
                   payload: bool = True) -> None:
        """Dead-letter ``msg`` in the open transaction; the payload is cut to fit (see deadletters.py)."""
        value, key, headers = dead_letter(msg, exc, reason, self.limits, payload=payload)
        report = partial(self._on_delivery, (msg.partition(), msg.offset()))
        try:
            self.producer.produce(self.settings.topic_dlq, value, key=key, headers=headers, on_delivery=report)
        except KafkaException as err:  # even the cut payload is refused: the headers alone still say what happened
            if err.args[0].code() not in RECORD_ERRORS:
                raise
            value, key, headers = dead_letter(msg, exc, reason, self.limits, payload=False)
            self.producer.produce(self.settings.topic_dlq, value, key=key, headers=headers, on_delivery=report)
        stats.dead[reason] += 1

    def _on_delivery(self, source: tuple[int, int], err: KafkaError | None, msg: Message) -> None:
        """Note the input behind an output the broker refused for the record's own sake. Kafka refuses a
        whole produce request (every record of it gets the error), so a refusal among others only makes
        the input a suspect; the replay produces a suspect's outputs alone, and a refusal then is its own."""
        if err is None or err.code() not in RECORD_ERRORS:
            return
        self.checkpoint.replace_after_abort = True
        if source != self._isolated:
            self._refused.setdefault(source, SUSPECT)
            return
        level = DEAD_REFUSED if msg.topic() == self.settings.topic_dlq else REFUSED
        self._refused[source] = max(self._refused.get(source, SUSPECT), level)
        what = "dead letter" if level == DEAD_REFUSED else "output record"
        why = (f"the broker refused this event's {what} ({len(msg.value() or b'')} bytes to {msg.topic()}): "
               f"{err.str()} [{err.name()}]")
        earlier = self._refusals.get(source)
        self._refusals[source] = f"{earlier}; then {why}" if earlier else why
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
        if stats.backdated:
            m.backdated.inc(len(stats.backdated))
            event_id, agent_id = stats.backdated[0]
            log.warning("access changes stamped long before they reached the log",
                        extra={"kv": {"count": len(stats.backdated), "event_id": event_id, "agent_id": agent_id,
                                      "hours": self.settings.backdated_hours}})

ESCALATION_CATEGORY = "escalation"
ESCALATION_SERIES_TTL = 900.0  # seconds a detected chain stays on /metrics (the page's window)


def backdated(ev: TransitionDict, log_ms: int, limit_ms: int) -> bool:
    """An access change stamped more than ``limit_ms`` before ``log_ms``, its record's timestamp on the
    transitions topic (0 or less: unknown; ``limit_ms`` 0: off). Such an event passes the age limit and is
    scored and stored (kept ``retention_days`` from storage, migration 007), but its ``occurred_at`` files it
    among days long past: an agent hiding a change from time-ranged reads, or a legitimate backfill. A
    record's timestamp is fixed, so a replay counts the same events."""
    return (limit_ms > 0 and log_ms > 0 and ev["action"] in ACCESS_CHANGES
            and ev["occurred_at"] < log_ms - limit_ms)


def _copy_seen(ev: TransitionDict, ctx: ScoringContext) -> bool:
    """A later copy of an event_id this partition already scored (a replay, or a rewritten copy: AG-EVD-004
    or AG-EVD-005). It is scored and kept apart by the writer, but emits no access facts: the correlator
    must not count its grant as a new one. Copies on other partitions: the correlator's AG-XRN-006."""
    event_id = ev["event_id"]
    return event_id in ctx.seen_event_hashes or any(h["event_id"] == event_id for h in ctx.run_history)


class _Batch:
    """What every event of one batch sees the same: the clock, the policy, keys and exceptions."""

    __slots__ = ("excepted", "keys", "now_ms", "policy", "require")

    def __init__(self, scorer: Scorer, now_ms: int) -> None:
        self.now_ms = now_ms
        self.policy = scorer.policy
        self.keys = scorer.signing_keys
        self.require = scorer.settings.require_signatures
        self.excepted = scorer.exceptions()  # one index per batch: every event of it sees the same versions


class _BatchStats:
    """Per-batch tallies, folded into Prometheus once per batch (cheaper than per-event label lookups)."""

    __slots__ = ("backdated", "consumed", "dead", "escalations", "excepted", "findings", "latencies", "levels",
                 "poison", "scores", "transitions")

    def __init__(self) -> None:
        self.consumed = 0
        self.backdated: list[tuple[str, str]] = []  # (event_id, agent_id) of access changes stamped long before
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
