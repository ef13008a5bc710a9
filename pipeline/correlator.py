"""The correlator: every access fact of an entity, whichever run or partition it came from.

A consumer group over the entity-keyed fact topics (``facts.py``). For each input partition it keeps
windowed per-key state, evaluates the cross-run rules (``scoring/crossrun.py``) on each fact in
event-time order, and publishes the findings to ``agentgov.correlations.v1`` in the same Kafka
transaction as its offsets (the :class:`~pipeline.loop.TransactionalLoop` shared with the scorer).

Early pages: each fact is also judged the moment it arrives, against the facts of its key that arrived so
far (event-time order), by the rules that page (``PAGING_BY_TARGET``/``PAGING_BY_AGENT``: tier stepping,
transient privilege, delegation laundering); a fact older than facts of its key already judged so makes
them be judged again with it. A chain found so sets the page (``agentgov_escalation_chain_detected``)
at once; its finding is published at the watermark, below, so the stored findings do not depend on
arrival order (docs/guarantees.md, "Early pages").

Event time: facts wait in a per-partition buffer until the partition's watermark passes them
(``KeyedState.watermark``), so facts arriving out of order within the grace period are judged in
event-time order, a backlog included. The watermark is

- while facts keep arriving, the latest event time of the slowest source partition, less the grace;
- once the partition has been quiet for ``QUIET_SECONDS`` (and its last batch was not full: a full batch
  is a backlog), that moved on at the clock's pace from where the facts left it;
- once it has been idle for ``SOURCE_IDLE_SECONDS``, at least the wall clock less the grace too.

A wall-clock flush runs once a second (``wants_empty_batch``), so a quiet key's windows close without new
facts. Rules only look at facts before the one they judge. A fact arriving after later facts of its
partition were judged (later than the grace) is judged, then the later facts of its key are judged again
with it, so the chain it completes is still found; findings already published are not published again.
It is counted in ``agentgov_correlator_late_facts_total``.

The per-partition state and its event-time bookkeeping are :class:`~pipeline.keyed_state.KeyedState`; this
module is the role: the consumer group, the rules it passes the state, rebuild on assignment, the transaction.

State is rebuilt from the log, never kept: on assignment (and on a rewind after an aborted transaction)
the correlator reads the co-partitioned holdings partition of every by-target partition it owns, in one
read, then replays ``correlation_retain_seconds`` of each partition before its committed offset
(``recovery.py``), applies what the watermark had surely released without judging it again (up to
``KeyedState.floor``) and buffers the rest. Findings have deterministic ids, so the few a replay judges
again are stored once.

Example::

    Correlator(settings, Metrics(), load_policy(settings.policy_file), baselines=cache.for_identity).run(stop)
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from . import __version__
from .deadletters import RECORD_ERRORS, Source, dead_letter
from .delegations import DelegationGraph
from .errors import DeadLetter, ValidationError
from .events import TransitionDict
from .fact_reader import FactReader
from .facts import FACT, FINDING, partition_for
from .keyed_state import KeyedState, order
from .limits import FACT_MAX_BYTES, STORE_TIME_MIN_MS, Limits, check_fact_time
from .loop import TransactionalLoop
from .metrics import Metrics
from .policy_watch import PolicyWatcher
from .recovery import log_reader, replay
from .schemas import SchemaSet
from .scoring.catalogue import CATALOGUE
from .scoring.context import AgentBaseline
from .scoring.crossrun import (
    BY_AGENT_RULES,
    BY_TARGET_RULES,
    PAGING_BY_AGENT,
    PAGING_BY_TARGET,
    CrossRunContext,
    CrossRunFinding,
    correlate,
    delegation_laundering,
    entry_test,
    group_nesting_across_runs,
    may_find_by_agent,
    may_find_by_target,
    may_page,
    stale_policy_across_partitions,
)
from .scoring.policy import LoadedPolicy
from .scoring.rules import granted_access, stale_decision
from .serde import Serde, make_registry
from .settings import Settings

log = logging.getLogger(__name__)

HOLDINGS_READ_SECONDS = 60.0
"""How long a rebuild may take to read its holdings partitions to their ends before it is retried."""

Baselines = Callable[[str], AgentBaseline | None]
ESCALATION_SERIES_TTL = 900.0
# Group nesting (AG-XRN-008) scans an agent's whole window for the group's creation; without a matching
# create_group in it (KeyedState.created_before) it finds nothing, and the scan is quadratic on a busy agent.
AGENT_RULES_BUT_NESTING = tuple(r for r in BY_AGENT_RULES if r is not group_nesting_across_runs)
PAGING_BUT_NESTING = tuple(r for r in PAGING_BY_AGENT if r is not group_nesting_across_runs)
QUIET_SECONDS = 1.0  # a partition without a new fact this long is quiet: its watermark moves on at the clock's pace
SOURCE_RECHECK_SECONDS = 30.0  # a fact naming a source partition past the count known asks the broker again
KAFKA_PARTITIONS_MAX = 2**31  # a partition id is a Kafka int32


class Correlator(TransactionalLoop):
    """Cross-run correlation consumer. Scale out by running more of them in the same group."""

    role = "correlator"
    _sources: int | None = None  # the scorers' input partitions, once asked (_source_partitions)
    _sources_asked: float = float("-inf")  # when (monotonic) a fact past the known count made it ask again

    def __init__(self, settings: Settings, metrics: Metrics, policy: LoadedPolicy, *,
                 baselines: Baselines | None = None, registry: Any = None,
                 delegations: DelegationGraph | None = None) -> None:
        super().__init__(settings, metrics, group=settings.correlator_group,
                         topics=[settings.topic_facts_by_target, settings.topic_facts_by_agent])
        self.policy = policy
        self.baselines: Baselines = baselines or (lambda agent_id: None)
        schemas = SchemaSet.load()
        registry = registry if registry is not None else make_registry(settings)
        self.facts = Serde(schemas, registry, record=FACT, subject=f"{settings.topic_facts_by_target}-value",
                           max_bytes=FACT_MAX_BYTES)  # live, replayed, holdings and delegation edges alike
        self.reader = FactReader(self.facts)
        self.out = Serde(schemas, registry, record=FINDING, subject=f"{settings.topic_correlations}-value")
        self.graph = delegations or DelegationGraph(settings, self.facts, metrics).start()
        self.limits = Limits.from_settings(settings)
        self.grace_ms = int(settings.correlation_grace_seconds * 1000)
        self.retain_ms = settings.correlation_retain_seconds * 1000
        self.scorer_window_ms = settings.context_window_seconds * 1000
        self.states: dict[tuple[str, int], KeyedState] = {}
        # By-agent state -> how many delegation edges (``DelegationGraph.read``) its judged facts were judged
        # with: an edge read after them re-judges them (``_late_edges``).
        self._edges_known: dict[tuple[str, int], int] = {}
        self._watcher = PolicyWatcher(settings.policy_file, policy, settings.policy_reload_seconds)
        self._next_flush = 0.0
        self.emitted = 0
        for spec in CATALOGUE.values():
            if spec.code.startswith("AG-XRN"):
                self.metrics.findings.labels(code=spec.code, severity=spec.severity.value,
                                             category=spec.category.value)
        self.metrics.policy_info.labels(role=self.role).info({"version": policy.version, "sha256": policy.sha256})

    # -- context: rebuilt by replay -----------------------------------------------------------
    def _decode(self, msg: Message) -> TransitionDict | None:
        """A replayed fact or holding; None (logged) if it does not decode, or its time or source is refused
        (:func:`check_fact_time`, :meth:`_check_source`; read live, such a fact was dead-lettered)."""
        try:
            ev = self.reader.read(msg.value())
            check_fact_time(ev["occurred_at"], self.limits, int(time.time() * 1000))
            self._check_source(ev)
            return ev
        except DeadLetter as exc:
            log.warning("bad access fact", extra={"kv": {"error": str(exc), "topic": msg.topic(),
                                                          "partition": msg.partition(), "offset": msg.offset()}})
            return None

    def rebuild(self, tp: TopicPartition) -> None:
        self.rebuild_all([tp])

    def rebuild_all(self, tps: list[TopicPartition]) -> None:
        """Rebuild the state of every partition of an assignment (or a rewind): the holdings of all its
        by-target partitions in one read (``_load_holdings``), then each partition's replay."""
        states = {(tp.topic, tp.partition): self._new_state(tp.topic == self.settings.topic_facts_by_target)
                  for tp in tps}
        held = self._load_holdings({p: state for (topic, p), state in states.items()
                                    if topic == self.settings.topic_facts_by_target})
        for tp in tps:
            state = self._hold(tp.topic, tp.partition, states[(tp.topic, tp.partition)])
            self._replay_into(tp, state, held.get(tp.partition, 0) if state.by_target else 0)

    def _replay_into(self, tp: TopicPartition, state: KeyedState, held: int) -> None:
        # The whole window, however many facts it holds (no count or time cap: a window cut short would miss
        # chains after every restart, and judge differently from a replica that never restarted).
        replayed = (replay(self.settings, tp, self.retain_ms, self._decode, state.add, max_events=None,
                           max_seconds=None) if tp.offset > 0 else 0)
        # What the watermark had surely released before the last commit is history: apply it, judge it no more.
        # The rest is judged (again, for what had been released past the floor: same finding ids, stored once).
        for ev in state.release(state.floor(self.grace_ms)):
            state.apply(state.key_of(ev), ev, self.retain_ms)
            state.released = max(state.released, order(ev))
        state.trim_arrived(self._early_keep_ms())
        state.arrived_at = time.monotonic()  # busy until shown quiet: what follows the replay may be a backlog
        log.info("correlator state rebuilt", extra={"kv": {
            "topic": tp.topic, "partition": tp.partition, "until": tp.offset, "facts": replayed,
            "holdings": held, "pending": len(state.pending)}})

    def _load_holdings(self, states: dict[int, KeyedState], max_seconds: float = HOLDINGS_READ_SECONDS
                       ) -> dict[int, int]:
        """Read the co-partitioned holdings partition of each by-target partition in ``states`` whole
        (compacted: one record per ``facts.holding_key``) into its state; answers how many each held.

        One reader for all of them: a rebalance or a rewind rebuilds every partition it owns, and one read
        per partition, each waiting for its own end, stalled the correlator about a second per partition
        (with nothing to read). Each partition is read until the fetch itself reports its end
        (``enable.partition.eof``; with read_committed that is the last stable offset, so a scorer's open
        transaction does not hold the read up: what it writes arrives as facts after this partition's
        committed offset); what arrives for it after that is left to the facts. Not a watermark asked for
        beforehand: a broker that answers that lookup low (Tansu was seen to answer 0) would leave old
        holdings out, and SoD or leaver rules would miss grants made long ago. A read that does not reach
        every end in ``max_seconds`` raises, so the rebuild is retried, never half done."""
        counts = dict.fromkeys(states, 0)
        if not states:
            return counts
        topic = self.settings.topic_holdings
        reader = log_reader(self.settings, "holdings")  # the end reported, a short fetch wait (recovery.py)
        try:
            reader.assign([TopicPartition(topic, p, 0) for p in states])
            reading, deadline = set(states), time.monotonic() + max_seconds
            while reading and time.monotonic() < deadline:
                for msg in reader.consume(1000, 0.2):
                    p = msg.partition()
                    if p not in reading:
                        continue  # past its end: arrives as a fact
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            reading.discard(p)
                        continue
                    ev = self._decode(msg)
                    if ev is not None:
                        states[p].hold(ev)
                        counts[p] += 1
            if reading:
                log.warning("holdings not read to their end; the rebuild will be retried",
                            extra={"kv": {"partitions": sorted(reading), "read": sum(counts.values()),
                                          "seconds": max_seconds}})
                raise KafkaException(KafkaError(
                    KafkaError._TIMED_OUT, f"holdings partitions {sorted(reading)} not read to their end in "
                                           f"{max_seconds:g}s"))
            return counts
        finally:
            reader.close()

    def _hold(self, topic: str, partition: int, state: KeyedState) -> KeyedState:
        """Own ``state`` for the partition. What a by-agent state holds before it judges anything (a replay's
        facts) counts as judged with the delegation edges read so far: the previous owner judged them, and
        judging them again on every restart would page their chains again."""
        self.states[(topic, partition)] = state
        if not state.by_target:
            self._edges_known[(topic, partition)] = self.graph.read
        return state

    def _new_state(self, by_target: bool) -> KeyedState:
        return KeyedState(by_target, stale_of=None if by_target else self._stale_of(),
                          expected_sources=self._source_partitions())

    def _source_partitions(self) -> int:
        """The scorers' input partitions (``source_partition`` of the facts), which a fact partition's watermark
        waits to have heard from (``KeyedState.expected_sources``); 0 when the broker does not say (the
        watermark then counts the sources as they appear)."""
        if self._sources is None:
            try:
                meta = self.consumer.list_topics(self.settings.topic_transitions, timeout=10).topics
                topic = meta.get(self.settings.topic_transitions)
                self._sources = len(topic.partitions) if topic is not None and not topic.error else 0
            except KafkaException as exc:
                log.warning("source partition count unknown; the watermark counts sources as they appear",
                            extra={"kv": {"error": str(exc)}})
                self._sources = 0
        return self._sources

    def _check_source(self, ev: TransitionDict) -> int:
        """Refuse a fact (:class:`ValidationError`, reason ``invalid_value``) whose ``source_offset`` is negative
        or whose ``source_partition`` is not a partition of the scorers' input topic; answers the partition
        count to check the next facts against. Each source partition a fact names gets a watermark entry in its
        state (``KeyedState.sources``), which every batch walks: forged facts naming a new partition each
        grew it without bound. A partition past the count known may be one added since: the broker is asked
        again, at most every ``SOURCE_RECHECK_SECONDS``, before the fact is refused. A broker that does not
        say bounds it by Kafka's int32 partition ids alone."""
        if ev["source_offset"] < 0:
            raise ValidationError(f"source_offset={ev['source_offset']} is negative", reason="invalid_value",
                                  field="source_offset")
        part = ev["source_partition"]
        known = self._source_partitions()
        if 0 <= part < (known or KAFKA_PARTITIONS_MAX):
            return known or KAFKA_PARTITIONS_MAX
        if part >= 0 and known and time.monotonic() - self._sources_asked >= SOURCE_RECHECK_SECONDS:
            self._sources_asked, self._sources = time.monotonic(), None
            known = self._source_partitions() or known
            if part < known:
                log.info("source partitions added", extra={"kv": {"topic": self.settings.topic_transitions,
                                                                    "partitions": known}})
                for state in self.states.values():
                    state.expected_sources = known
                return known
        raise ValidationError(
            f"source_partition={part} is not a partition of {self.settings.topic_transitions} "
            f"({known or 'unknown'} partitions)", reason="invalid_value", field="source_partition")

    def _stale_of(self) -> Callable[[TransitionDict], bool]:
        return functools.partial(stale_decision, self.policy.governance)

    def forget(self, tp: TopicPartition) -> None:
        self.states.pop((tp.topic, tp.partition), None)
        self._edges_known.pop((tp.topic, tp.partition), None)

    # -- policy -------------------------------------------------------------------------------
    def tick(self) -> None:
        changed = self._watcher.poll()
        if changed is not None:
            self.policy = changed
            for state in self.states.values():  # which versions are approved may have changed
                if not state.by_target:
                    state.restale(self._stale_of())
            self.metrics.policy_info.labels(role=self.role).info(
                {"version": changed.version, "sha256": changed.sha256})

    def wants_empty_batch(self) -> bool:
        """A wall-clock flush: once a second, release what the clock (not new facts) has made due."""
        now = time.monotonic()
        if now < self._next_flush:
            return False
        self._next_flush = now + 1.0
        return any(s.pending for s in self.states.values())

    # -- one batch, inside the checkpoint's transaction ---------------------------------------
    def handle(self, msgs: list[Message]) -> _Tally:
        tally = _Tally()
        now_ms, now = int(time.time() * 1000), time.monotonic()
        behind = len(msgs) >= self.settings.batch_max_messages
        latest = now_ms + self.limits.max_future_ms
        sources = self._source_partitions() or KAFKA_PARTITIONS_MAX
        self._graph_synced = False  # a batch reads the graph as of its start (_edges_into)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error", extra={"kv": {"error": str(err)}})
                continue
            try:
                ev = self.reader.read(msg.value())
                if not STORE_TIME_MIN_MS <= ev["occurred_at"] <= latest:  # a forged time is no state
                    check_fact_time(ev["occurred_at"], self.limits, now_ms)
                if not 0 <= ev["source_partition"] < sources or ev["source_offset"] < 0:
                    sources = self._check_source(ev)
            except DeadLetter as exc:
                self._send_dead(msg, exc)
                tally.dead[exc.reason] += 1
                continue
            state = self.states.get((msg.topic(), msg.partition()))
            if state is None:  # assignment raced; build on the fly
                state = self._hold(msg.topic(), msg.partition(),
                                   self._new_state(msg.topic() == self.settings.topic_facts_by_target))
            if state.add(ev, now):
                self._page(self._page_early(state, ev))
            tally.facts += 1
        self._late_edges(now_ms, tally)
        for state in self.states.values():
            # A full batch means a backlog: a partition missing from it is not quiet, only not fetched yet.
            quiet = not behind and now - state.arrived_at >= QUIET_SECONDS
            cut = state.rejudge_cut
            found, late = state.judge_due(state.watermark(self.grace_ms, quiet, now, now_ms), self.retain_ms,
                                          functools.partial(self._guarded, self._judge, state),
                                          rejudge=functools.partial(self._rejudge, state))
            tally.rejudge_cut += state.rejudge_cut - cut
            tally.late += late
            for f in found:
                self._publish(f, now_ms, tally)
            state.prune_seen()
            state.expire(self.retain_ms, self._early_keep_ms())
        return tally

    def _send_dead(self, msg: Source, exc: DeadLetter) -> None:
        """Dead-letter a refused fact (or finding) in the open transaction, its payload cut to fit (deadletters.py): a
        record near the broker's size limit, forwarded whole, was refused by the producer, and the batch was
        aborted and read again, the partition stuck on it. Even the cut payload refused: the headers alone."""
        value, key, headers = dead_letter(msg, exc, exc.reason, self.limits)
        try:
            self.producer.produce(self.settings.topic_dlq, value, key=key, headers=headers)
        except KafkaException as err:
            if err.args[0].code() not in RECORD_ERRORS:
                raise
            value, key, headers = dead_letter(msg, exc, exc.reason, self.limits, payload=False)
            self.producer.produce(self.settings.topic_dlq, value, key=key, headers=headers)

    def _publish(self, f: CrossRunFinding, now_ms: int, tally: _Tally) -> None:
        record = f.to_avro(now_ms, __version__, self.policy.version)
        value, key = self.out.encode(record), f.finding_id.encode()
        if len(value) <= self.limits.event_bytes:
            try:
                self.producer.produce(self.settings.topic_correlations, value, key=key)
            except KafkaException as exc:
                if exc.args[0].code() not in RECORD_ERRORS:
                    raise
            else:
                tally.found.append(f)
                return
        self._dead_finding(f, value, key, tally)

    def _dead_finding(self, f: CrossRunFinding, value: bytes, key: bytes, tally: _Tally) -> None:
        """A finding too large for one record (a chain of 100 facts with long ids) goes to the dead-letter topic,
        its payload cut to fit (``agentgov.payload.sha256`` names the whole), and still pages. Produced as it was,
        the producer refused it in every transaction: the batch was aborted and read again, and the correlator
        stopped on it for good (audit, session 26)."""
        exc = DeadLetter(f"cross-run finding {f.finding_id} ({f.spec.code}) of {len(value)} bytes does not fit in "
                         f"a record of {self.limits.event_bytes}", reason="oversized")
        self._send_dead(_Unsent(self.settings.topic_correlations, key, value), exc)
        tally.dead[exc.reason] += 1
        log.error("cross-run finding too large to publish; dead-lettered", extra={"kv": {
            "finding_id": f.finding_id, "code": f.spec.code, "bytes": len(value), "event_id": f.event["event_id"]}})
        if f.pattern:
            self._page([f])

    def _late_edges(self, now_ms: int, tally: _Tally) -> None:
        """Judge again, by delegation laundering, the grants an edge read since they were judged can complete.

        The rule reads the graph as of a grant's event time, but the graph is as complete as the follower has
        read: an edge granted before a grant can be read after it, when its run was scored later (a lagging
        scorer or partition, a backlog read unevenly), and the grant's fact did not wait for it. For each such
        edge (grantor -> delegate, at t), the grants after t by the delegate, or by an agent downstream of it
        within ``max_delegation_depth``, or by an agent acting on behalf of one of those (the rule's frontier
        starts at a grant's principal too), that this correlator has judged are judged again by that rule alone.
        A chain already published is not published again (``KeyedState.first_time``). Edges are few (an
        agent giving another agent access), so this is a handful of lookups a batch, usually none."""
        read = self.graph.read
        behind = {skey: known for skey, known in self._edges_known.items() if known < read}
        if not behind:
            return
        depth = self.policy.governance.escalation.max_delegation_depth
        first = min(behind.values())
        # Each new grant edge with the agents it reaches, once a batch (not once per by-agent state).
        edges = [(i, edge, self.graph.downstream(edge["target"]["identity_id"], depth - 1))
                 for i, edge in enumerate(self.graph.since(first, read), first)
                 if granted_access(edge)]  # a revoke ends chains; published findings are never withdrawn
        for skey, known in behind.items():
            self._edges_known[skey] = read
            state = self.states.get(skey)
            if state is None:
                continue
            for i, edge, reached in edges:
                if i < known:
                    continue
                late = False
                actors = set(reached)
                for agent in reached:
                    actors.update(state.acting_for.get(agent, ()))
                for agent in sorted(actors):
                    if partition_for(agent, self.settings.facts_partitions) != skey[1]:
                        continue  # another partition's agent: its owner judges it
                    judge = functools.partial(self._guarded, functools.partial(self._laundering, CrossRunContext(
                        self.policy, agent, delegations=self.graph.into, scorer_window_ms=self.scorer_window_ms)))
                    for ev in state.judged_since(agent, edge["occurred_at"]):  # same ms: _live_edges counts it
                        if granted_access(ev):
                            late = True
                            for f in judge(state, agent, ev):
                                if state.first_time(f.finding_id):
                                    self._publish(f, now_ms, tally)
                tally.late_edges += late

    @staticmethod
    def _laundering(cx: CrossRunContext, state: KeyedState, key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        return correlate(ev, cx, (delegation_laundering,))

    def wrote(self, tally: _Tally) -> bool:
        """Most batches find nothing: findings and dead letters are all a correlator writes."""
        return bool(tally.found or tally.dead)

    def _edges_into(self, agent: str) -> list[TransitionDict]:
        """The delegation graph's edges into ``agent``, the graph brought up to its topic's end first (once per
        batch, and only when a rule asks: the laundering rule does for a privileged grant with no human
        authority, a rare fact; asking the broker for every batch slowed the whole stage)."""
        if not getattr(self, "_graph_synced", True):
            self._sync_graph()
            self._graph_synced = True
        return self.graph.into(agent)

    def _sync_graph(self) -> None:
        """Bring the delegation graph up to the topic's end before judging by-agent facts (DelegationGraph.sync)."""
        try:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(self.settings.topic_delegations, 0),
                                                          timeout=5, cached=False)
        except KafkaException as exc:
            log.warning("delegation topic end unknown; judging with the graph as it is",
                        extra={"kv": {"error": str(exc)}})
            return
        if not self.graph.sync(high, 10.0):
            log.warning("delegation graph behind its topic; judging with the graph as it is",
                        extra={"kv": {"graph_position": self.graph.position, "topic_end": high}})

    def _page_early(self, state: KeyedState, ev: TransitionDict) -> list[CrossRunFinding]:
        """The paging rules, on arrival (``KeyedState.judge_early``): by target over the escalation window of
        arrived facts; by agent over the agent's arrived facts (group nesting) and the delegation graph."""
        window, keep, by_target, by_agent, but_nesting = self._early_terms()
        reach, may = window, by_target
        if not state.by_target:
            key = state.key_of(ev)
            may = by_agent
            if not (ev["action"] == "create_group" or state.created_before(key, ev, window)):
                # By agent, re-judging the key's later facts can only matter to group nesting, and only when
                # this fact is a step of a chain: the group's creation, or an act on a group the agent created
                # before it. Any other fact of a busy agent would cost O(its window) for nothing (a busy agent
                # that once created a group included).
                reach = 0
                if state.arrived[key][-1][1] is ev:
                    # Nothing of the key arrived after it (the usual case): it is the one fact judged, and
                    # ``_paging`` judges it by the paging rules but group nesting, whose entry test is this.
                    may = but_nesting
        # Most facts can complete no chain: the rules' entry test turns them away before any call into the rules.
        return state.judge_early(ev, reach, keep, functools.partial(self._guarded, self._paging, state), may)

    _early_for: LoadedPolicy | None = None
    _early: tuple[int, int, Callable[[TransitionDict], bool], Callable[[TransitionDict], bool],
                  Callable[[TransitionDict], bool]]

    def _early_terms(self) -> tuple[int, int, Callable[[TransitionDict], bool], Callable[[TransitionDict], bool],
                                    Callable[[TransitionDict], bool]]:
        """What every early page reads of the policy, made once per policy (a reload makes them again): the
        escalation window (ms), the event time of arrived facts kept (``_early_keep_ms``), and the paging
        rules' entry tests by target, by agent, and by agent without group nesting."""
        if self._early_for is not self.policy:
            policy = self.policy.governance
            target_test, agent_test = entry_test(PAGING_BY_TARGET), entry_test(PAGING_BY_AGENT)
            but_nesting = entry_test(PAGING_BUT_NESTING)
            self._early = (policy.escalation.window_seconds * 1000, self._early_keep_ms(),
                           lambda e: target_test(e, policy), lambda e: agent_test(e, policy),
                           lambda e: but_nesting(e, policy))
            self._early_for = self.policy
        return self._early

    def _guarded(self, rules: Callable[[KeyedState, str, TransitionDict], list[CrossRunFinding]],
                 state: KeyedState, key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        """A rule that raises on a fact must not end the correlator: restarted, it would replay the same fact
        and raise again, a crash loop for the partition. The fact's judgement is skipped (deterministically:
        a replay skips it too), logged with the traceback and counted; the scorer does the same for its
        rules (dead letter ``internal``)."""
        try:
            return rules(state, key, ev)
        except Exception:
            log.exception("cross-run rule failed; the fact's judgement is skipped", extra={"kv": {
                "event_id": ev.get("event_id"), "key": key, "by_target": state.by_target}})
            self.metrics.correlator_rule_errors.inc()
            return []

    def _early_keep_ms(self) -> int:
        """How much event time of arrived facts early pages read: a fact arriving within the grace reaches
        back one escalation window (group nesting reads the agent's facts, the other paging rules the
        target's)."""
        return self.policy.governance.escalation.window_seconds * 1000 + self.grace_ms

    def _paging(self, state: KeyedState, key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        policy = self.policy.governance
        if state.by_target:  # ``may_page(ev, policy, PAGING_BY_TARGET)``: judge_early asked it (_page_early)
            history = state.arrived_before(key, ev, policy.escalation.window_seconds * 1000)
            cx = CrossRunContext(self.policy, key, history=history, scorer_window_ms=self.scorer_window_ms)
            return correlate(ev, cx, PAGING_BY_TARGET)
        if not granted_access(ev):
            return []
        window = policy.escalation.window_seconds * 1000
        rules = PAGING_BY_AGENT if state.created_before(key, ev, window) else PAGING_BUT_NESTING
        if not may_page(ev, policy, rules):
            return []
        cx = CrossRunContext(self.policy, key, history=state.arrived_before(key, ev, window),
                             delegations=self._edges_into, scorer_window_ms=self.scorer_window_ms)
        return correlate(ev, cx, rules)

    def _judge(self, state: KeyedState, key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        policy = self.policy.governance
        if state.by_target:
            same = state.same_id(ev)
            if not may_find_by_target(ev, policy, copies=bool(same), left=key in state.accounts_ended):
                return []  # most facts: no rule can complete a chain on it, whatever the state holds
            # Escalation and SoD read the escalation window; holdings cover anything older.
            history = state.before(key, ev, policy.escalation.window_seconds * 1000)
            held = state.held(key) if granted_access(ev) else ()
            cx = CrossRunContext(self.policy, key, history=history, holdings=held, same_id=same,
                                 scorer_window_ms=self.scorer_window_ms)
            return correlate(ev, cx, BY_TARGET_RULES)
        # The stale-share rule reads the drift window's counts only for a stale decision (indexed: O(log n) for
        # a busy agent). Group nesting scans the agent's history; it can only find a group created in it, so
        # it is skipped without one.
        drift_ms = policy.drift.rate_window_seconds * 1000
        decisions = state.decision_window(key, ev, drift_ms) if stale_decision(policy, ev) else None
        if not granted_access(ev):
            # The other agent rules judge executed grants only; the stale share counts every decision of the
            # agent, so any stale one (a revoke, a denied grant) can be the one that crosses its threshold.
            if decisions is None:
                return []
            cx = CrossRunContext(self.policy, key, decision_window=decisions, baseline=self.baselines(key),
                                 scorer_window_ms=self.scorer_window_ms)
            return correlate(ev, cx, (stale_policy_across_partitions,))
        window = policy.escalation.window_seconds * 1000
        nesting = state.created_before(key, ev, window)
        baseline = self.baselines(key)
        recent = state.grants_before(key, ev, drift_ms)
        if not may_find_by_agent(ev, policy, baseline, recent_grants=len(recent), stale=decisions is not None,
                                 nesting=nesting):
            return []  # most grants: no rule can complete a chain on it, whatever the history holds
        cx = CrossRunContext(self.policy, key, history=state.before(key, ev, window),
                             decision_window=decisions, delegations=self._edges_into, baseline=baseline,
                             recent_grants=recent, scorer_window_ms=self.scorer_window_ms)
        return correlate(ev, cx, BY_AGENT_RULES if nesting else AGENT_RULES_BUT_NESTING)

    def _rejudge(self, state: KeyedState, key: str, late: TransitionDict
                 ) -> tuple[Callable[[str, TransitionDict], list[CrossRunFinding]], int | None] | None:
        """Which later facts of its key a late fact (past the grace) is judged again with, and by which rules
        (``KeyedState.judge_due``). By target, all of them with every rule: a target's facts are few, and the
        holdings rules (SoD, a grant to a leaver) reach back any age. By agent, only a step of a group
        nesting chain (like the early pages' reach, ``_page_early``) makes the agent's later facts within
        the escalation window be judged again, by group nesting alone: laundering reads the delegation
        graph, not the agent's history (an edge read late re-judges instead: ``_late_edges``), and the
        counting rules (grant rate, stale share) count the late fact from then on but do not report again a
        crossing it would have moved earlier. Judging a busy agent's whole window again with them for every
        late fact cost the square of the window: a backlog whose partitions were read unevenly (or an agent
        backdating its events) stalled the correlator."""
        if state.by_target:
            return functools.partial(self._guarded, self._judge, state), None
        window = self.policy.governance.escalation.window_seconds * 1000
        if late["action"] != "create_group" and not state.created_before(key, late, window):
            return None
        return functools.partial(self._guarded, self._nesting, state), window

    def _nesting(self, state: KeyedState, key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        window = self.policy.governance.escalation.window_seconds * 1000
        if not granted_access(ev) or not state.created_before(key, ev, window):
            return []
        cx = CrossRunContext(self.policy, key, history=state.before(key, ev, window),
                             scorer_window_ms=self.scorer_window_ms)
        return correlate(ev, cx, (group_nesting_across_runs,))

    def _page(self, chains: list[CrossRunFinding]) -> None:
        """Set the page of each chain found on arrival, at once: not after the batch's commit, which would add
        the rest of the batch and the commit to the time to page. The page is an alert, not an output of the
        transaction; a batch aborted after it is replayed and sets the same series again (one page per
        chain). The chain's finding follows at the watermark, in a transaction."""
        now = time.time()
        for f in chains:
            self.metrics.escalation_ring.set((f.pattern, f.event["agent"]["agent_id"], f.event["run_id"]), now)
            log.warning("cross-run escalation paged early", extra={"kv": {
                "pattern": f.pattern, "finding_id": f.finding_id, "event_id": f.event["event_id"],
                "runs": list(f.run_ids)}})

    def account(self, tally: _Tally, msgs: list[Message]) -> None:
        m = self.metrics
        m.correlator_facts.inc(tally.facts)
        m.correlator_late.inc(tally.late)
        m.correlator_rejudge_cut.inc(tally.rejudge_cut)
        m.correlator_late_edges.inc(tally.late_edges)
        m.correlator_pending.set(sum(len(s.pending) for s in self.states.values()))
        m.correlator_keys.set(sum(len(s.history) for s in self.states.values()))
        for reason, n in tally.dead.items():
            m.dead_letters.labels(reason=reason).inc(n)
        now = time.time()
        codes: Counter[tuple[str, str, str]] = Counter()
        for f in tally.found:
            codes[(f.spec.code, f.spec.severity.value, f.spec.category.value)] += 1
            if f.pattern:
                m.escalations.labels(pattern=f.pattern).inc()
                m.escalation_ring.set((f.pattern, f.event["agent"]["agent_id"], f.event["run_id"]), now)
                log.warning("cross-run escalation detected", extra={"kv": {
                    "pattern": f.pattern, "finding_id": f.finding_id, "runs": list(f.run_ids)}})
        for (code, sev, cat), n in codes.items():
            m.findings.labels(code=code, severity=sev, category=cat).inc(n)
        self.emitted += len(tally.found)

    def housekeeping(self) -> None:
        self.metrics.escalation_ring.expire(time.time() - ESCALATION_SERIES_TTL)

    def close(self) -> None:
        super().close()
        self.graph.stop()


class _Unsent:
    """A record the correlator could not produce, as :func:`~pipeline.deadletters.dead_letter` reads a message
    (a :class:`~pipeline.deadletters.Source`)."""

    __slots__ = ("_key", "_topic", "_value")

    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self._topic, self._key, self._value = topic, key, value

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return -1

    def offset(self) -> int:
        return -1


class _Tally:
    __slots__ = ("dead", "facts", "found", "late", "late_edges", "rejudge_cut")

    def __init__(self) -> None:
        self.facts = 0
        self.late = 0
        self.rejudge_cut = 0
        self.late_edges = 0
        self.dead: Counter[str] = Counter()
        self.found: list[CrossRunFinding] = []
