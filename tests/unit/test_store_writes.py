"""What the writer and the cross-run findings store send to a real embedded ClickHouse (chdb, a database
per test), with the broker replaced by fakes: which rows are stored, which are dead-lettered, what is
committed, and how the store's refusals are told apart from its failures."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from pipeline import correlations, decision_log, writer
from pipeline.assessment import DIGEST_HEADER, AssessmentEncoder, assessment_headers, transition_digest
from pipeline.correlations import CorrelationStore, day_runs
from pipeline.drafts import draft
from pipeline.errors import SinkError
from pipeline.events import AgentTransition, event_hash
from pipeline.facts import FINDING
from pipeline.metrics import Metrics
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.scoring import crossrun
from pipeline.scoring.engine import Scored
from pipeline.scoring.policy import load_policy
from pipeline.serde import SOE_HEADER, Serde
from pipeline.settings import Settings
from pipeline.sinks import clickhouse
from pipeline.sinks.clickhouse import ClickHouseSink, is_data_error, migrations, open_embedded
from pipeline.sinks.ocf import ContainerBuilder
from pipeline.writer import Writer

SCHEMAS = SchemaSet.load()
SERDE = Serde(SCHEMAS)
DAY_MS = 86_400_000


class Msg:
    """A consumed Kafka message (the parts the writer and the store read)."""

    def __init__(self, value: bytes, key: bytes, partition: int, offset: int, topic: str = "topic",
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        self._value, self._key, self._partition, self._offset = value, key, partition, offset
        self._topic, self._headers = topic, headers or []

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def topic(self) -> str:
        return self._topic

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out ``msgs`` and records commits; ``on_poll`` runs while the writer waits between attempts."""

    def __init__(self, *_: Any, msgs: list[Msg] | None = None) -> None:
        self.msgs = msgs or []
        self.commits: list[list[Any]] = []
        self.paused = False
        self.on_poll: Callable[[], None] = lambda: None

    def consume(self, n: int, _timeout: float) -> list[Msg]:
        out, self.msgs = self.msgs[:n], self.msgs[n:]
        return out

    def poll(self, _timeout: float) -> None:
        self.on_poll()

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append(offsets)

    def assignment(self) -> list[int]:
        return [0]

    def pause(self, _partitions: Any) -> None:
        self.paused = True

    def resume(self, _partitions: Any) -> None:
        self.paused = False


class FakeMembership:
    def __init__(self, *_: Any) -> None:
        pass

    def subscribe(self, *_: Any, **__: Any) -> None:
        pass

    def leave(self) -> None:
        pass


class FakeProducer:
    """A dead-letter topic that confirms every record."""

    def __init__(self, *_: Any) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None,
                on_delivery: Callable[[Any, Any], None] | None = None) -> None:
        self.sent.append((topic, value, headers or []))
        if on_delivery is not None:
            on_delivery(None, None)

    def flush(self, _timeout: float) -> int:
        return 0


@pytest.fixture
def sink(chdb_path: Path) -> ClickHouseSink:
    store = ClickHouseSink(open_embedded(chdb_path), f"u{uuid.uuid4().hex[:12]}")
    store.migrate()
    return store


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module in (writer, correlations):
        monkeypatch.setattr(module, "Consumer", FakeConsumer)
        monkeypatch.setattr(module, "Membership", FakeMembership)
        monkeypatch.setattr(module, "Producer", FakeProducer, raising=False)
    yield


def reason(headers: list[tuple[str, bytes]]) -> str:
    return dict(headers)["agentgov.error.reason"].decode()


# -- the cross-run findings store -------------------------------------------------------------------------
FINDINGS = Serde(SCHEMAS, record=FINDING)


def finding(offset: int, occurred_at: int, finding_id: str | None = None) -> Msg:
    ev = str(uuid.uuid4())
    rec = {"finding_id": finding_id or uuid.uuid4().hex, "code": "AG-XRN-007", "severity": "high",
           "category": "risk", "pattern": "", "message": "grant to leaver", "entity_key": f"u{offset}",
           "event_id": ev, "run_id": f"r{offset}", "agent_id": "agent-x", "occurred_at": occurred_at,
           "related_event_ids": [ev], "related_run_ids": [f"r{offset}"], "related_partitions": [0], "refs": [],
           "detected_at": int(time.time() * 1000), "correlator_version": "t", "governance_policy_version": "1"}
    rec = {f["name"]: rec.get(f["name"]) for f in SCHEMAS.latest(FINDING).raw["fields"]}
    return Msg(FINDINGS.encode(rec), ev.encode(), 0, offset, topic="agentgov.correlations.v1")


def correlation_store(sink: ClickHouseSink, msgs: list[Msg]) -> CorrelationStore:
    store = CorrelationStore(Settings(), Metrics(CollectorRegistry()), sink, registry=None)
    store.consumer = FakeConsumer(msgs=msgs)
    return store


def test_day_runs_cut_a_batch_into_runs_of_at_most_100_days() -> None:
    days = [7, 3, 7, 1, 2, 3, 9]
    assert day_runs(days, max_days=2) == [[3, 4], [1, 5, 0, 2], [6]]  # by day, then arrival; stable
    assert day_runs(days) == [[3, 4, 1, 5, 0, 2, 6]]
    assert day_runs([]) == []


@pytest.mark.parametrize("together", [False, True], ids=["after-the-first", "in-its-batch"])
def test_the_first_stored_copy_of_a_cross_run_finding_wins(sink: ClickHouseSink, fakes: None, together: bool) -> None:
    """``cross_run_findings`` (and its copy in ``findings``, 006) is a ReplacingMergeTree on finding_id with no
    version: a record on the correlations topic with a stored finding's id and severity "info" replaced it in
    both. The first stored copy stands; a copy with other content is dead-lettered naming what differs, and a
    correlator's re-publication of the same finding (another detection time and version, after a rebuild) is
    dropped: one row, no dead letter, nothing stored twice."""
    now = int(time.time() * 1000)
    real = finding(0, now, finding_id="f" * 32)
    rec = FINDINGS.decode(real.value()).record
    forged = Msg(FINDINGS.encode(dict(rec, severity="info", message="benign: reviewed", detected_at=now + 1000)),
                 rec["finding_id"].encode(), 0, 1, topic="agentgov.correlations.v1")
    again = Msg(FINDINGS.encode(dict(rec, detected_at=now + 2000, correlator_version="t2", related_partitions=[5])),
                rec["finding_id"].encode(), 0, 2, topic="agentgov.correlations.v1")
    store = correlation_store(sink, [real, forged, again] if together else [real])
    dlq = FakeProducer()
    store.dead_letter = lambda rejected: writer.deliver_dead_letters(
        dlq, "dlq", writer.Limits(), store.metrics, "writer", rejected)
    if together:
        assert store.poll_once() == 1
    else:
        assert store.poll_once() == 1
        store.consumer.msgs = [forged, again]
        assert store.poll_once() == 0
    assert store.consumer.commits[-1][0].offset == 3 and store.pending == []
    shown = {"severity": "high", "message": "grant to leaver"}
    assert sink.query("SELECT severity, message FROM {db}.cross_run_findings FINAL") == [shown]
    assert sink.query("SELECT severity, message FROM {db}.findings FINAL WHERE event_id = {e:String}",
                      {"e": rec["event_id"]}) == [shown]
    assert sink.query("SELECT count() AS n FROM {db}.cross_run_findings")[0]["n"] == 1  # raw: stored once
    letters = [dict(h) for _, _, h in dlq.sent]
    assert [(h["agentgov.error.reason"], h["agentgov.error.field"], h["agentgov.source.offset"]) for h in letters] == [
        (b"invalid_value", b"finding_id", b"1")]
    message = letters[0]["agentgov.error.message"].decode()
    assert "severity 'high' -> 'info'" in message and "message " in message and "detected_at" not in message


def colliding_findings(sink: ClickHouseSink, end_id: str) -> list[Msg]:
    """Two AG-XRN-002 findings completed by the same event whose ids fall on the same ``finding_idx`` of
    migration 006 (``1000 + cityHash64(finding_id) % 60000``): what an agent choosing its grants' event ids
    finds offline (about 75 pairs among 3,000 ids)."""
    ids = [crossrun.finding_id("AG-XRN-002", "u-jit", (f"grant-{i}", end_id)) for i in range(3000)]
    pair = sink.query("SELECT groupArray(2)(fid) AS pair FROM (SELECT arrayJoin({f:Array(String)}) AS fid) "
                      "GROUP BY 1000 + cityHash64(fid) % 60000 HAVING count() > 1 ORDER BY pair LIMIT 1",
                      {"f": ids})[0]["pair"]
    now = int(time.time() * 1000)
    out = []
    for i, fid in enumerate(pair):
        rec = FINDINGS.decode(finding(i, now).value()).record
        rec.update(finding_id=fid, code="AG-XRN-002", severity="critical", category="escalation",
                   pattern="transient_privilege", event_id=end_id, run_id="run-end", agent_id="agent-x",
                   occurred_at=now, message=f"grant #{i} revoked within the window", related_event_ids=[end_id])
        out.append(Msg(FINDINGS.encode(rec), fid.encode(), 0, i, topic="agentgov.correlations.v1"))
    return out


REVIEW_QUEUE_ROWS = ("SELECT message FROM {db}.findings FINAL WHERE event_id = {e:String} AND finding_idx >= 1000 "
                     "ORDER BY message")


def test_cross_run_findings_whose_finding_idx_collide_both_reach_the_review_queue(
        sink: ClickHouseSink, fakes: None) -> None:
    """006 keyed a cross-run finding's copy in ``findings`` by a 16-bit hash of its id: two findings of one code
    completed by one event whose ids collide mod 60,000 had one sorting key, and ``findings FINAL`` (the review
    queue) showed one. Keyed by the finding_id itself since 009: both stay."""
    end_id = str(uuid.uuid4())
    msgs = colliding_findings(sink, end_id)
    idx = sink.query("SELECT DISTINCT 1000 + cityHash64(arrayJoin({f:Array(String)})) % 60000 AS idx",
                     {"f": [m.key().decode() for m in msgs]})
    assert len(idx) == 1  # the pair does collide
    assert correlation_store(sink, msgs).poll_once() == 2
    assert sink.count("cross_run_findings") == 2
    assert sink.query(REVIEW_QUEUE_ROWS, {"e": end_id}) == [
        {"message": "grant #0 revoked within the window"}, {"message": "grant #1 revoked within the window"}]


def test_findings_a_collision_hid_before_009_are_visible_after_it_each_once(
        chdb_path: Path, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that took the colliding pair before 009 showed one of them; migrating copies the cross-run
    findings in again with their ids and drops the copies 006 made, so both show, once each, and the
    scorer's findings are untouched."""
    sink = ClickHouseSink(open_embedded(chdb_path), f"u{uuid.uuid4().hex[:12]}")
    everything = migrations()
    monkeypatch.setattr(clickhouse, "migrations", lambda: [m for m in everything if m[0] < 9])
    sink.migrate()
    end_id = str(uuid.uuid4())
    assert correlation_store(sink, colliding_findings(sink, end_id)).poll_once() == 2
    sink.client.insert(f"{sink.database}.findings", [[end_id, 1, "run-end", "agent-x", "AG-ESC-003", "scored",
                                                      datetime.now(UTC)]],
                       column_names=["event_id", "finding_idx", "run_id", "agent_id", "code", "message", "occurred_at"])
    assert len(sink.query(REVIEW_QUEUE_ROWS, {"e": end_id})) == 1  # the collision, as the audit found it
    scorer = sink.query("SELECT event_id, finding_idx, code FROM {db}.findings FINAL WHERE finding_idx < 1000")
    assert scorer == [{"event_id": end_id, "finding_idx": 1, "code": "AG-ESC-003"}]
    monkeypatch.setattr(clickhouse, "migrations", lambda: everything)
    assert sink.migrate() == [9]
    assert sink.query(REVIEW_QUEUE_ROWS, {"e": end_id}) == [
        {"message": "grant #0 revoked within the window"}, {"message": "grant #1 revoked within the window"}]
    assert sink.query("SELECT count() AS n FROM {db}.findings WHERE finding_idx >= 1000")[0]["n"] == 2  # raw
    assert sink.query("SELECT event_id, finding_idx, code FROM {db}.findings FINAL WHERE finding_idx < 1000") == scorer

def test_cross_run_findings_spread_over_more_than_100_days_are_stored_and_committed(
        sink: ClickHouseSink, fakes: None, caplog: pytest.LogCaptureFixture) -> None:
    """Migration 006 copies each finding into the day-partitioned ``findings``: one insert of findings over
    125 days was refused (error 252) and retried for ever. It goes in as runs of at most 100 days, so the
    store never refuses it (nothing to isolate)."""
    now = int(time.time() * 1000)
    msgs = [finding(i, now - (i * 3 + 1) * DAY_MS) for i in range(125)]  # 125 days, over 373 days
    store = correlation_store(sink, msgs)
    assert store.poll_once() == 125
    assert not [r for r in caplog.records if "isolating" in r.getMessage()]
    assert store.pending == [] and len(store.consumer.commits) == 1
    assert store.consumer.commits[0][0].offset == 125
    assert sink.count("cross_run_findings") == 125
    assert sink.query("SELECT count() AS n FROM {db}.findings FINAL WHERE code = 'AG-XRN-007'")[0]["n"] == 125
    assert store.poll_once() == 0  # nothing left behind, nothing retried


def test_a_cross_run_finding_the_store_refuses_is_dead_lettered_and_the_rest_stored(
        sink: ClickHouseSink, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's treatment: the refused row is isolated by bisection, dead-lettered (store_rejected),
    and the batch committed; before, the store retried the same batch on every tick and never moved on."""
    now = int(time.time() * 1000)
    msgs = [finding(i, now - i * DAY_MS, finding_id="poison" if i == 5 else None) for i in range(12)]
    real = sink.insert_rows

    def refusing(table: str, rows: list[list[Any]], columns: list[str], token: str) -> None:
        if any(r[0] == "poison" for r in rows):  # as ClickHouse answers a value it cannot take
            raise SinkError("insert failed: Code: 117. DB::Exception: bad value", table=table, kind="DatabaseError",
                            code=117, data=True)
        real(table, rows, columns, token)

    monkeypatch.setattr(sink, "insert_rows", refusing)
    store = correlation_store(sink, msgs)
    dlq = FakeProducer()
    store.dead_letter = lambda rejected: writer.deliver_dead_letters(
        dlq, "dlq", writer.Limits(), store.metrics, "writer", rejected)
    assert store.poll_once() == 11
    assert [reason(h) for _, _, h in dlq.sent] == ["store_rejected"]
    assert dict(dlq.sent[0][2])["agentgov.source.offset"] == b"5"
    assert store.consumer.commits[0][0].offset == 12 and store.pending == []
    assert sink.count("cross_run_findings") == 11
    assert store.metrics.registry.get_sample_value(
        "agentgov_poison_records_total", {"role": "writer", "reason": "store_rejected"}) == 1


def test_an_undecodable_cross_run_finding_is_dead_lettered_not_skipped(sink: ClickHouseSink, fakes: None) -> None:
    """A record on the findings topic that does not decode (anyone can write the topic on Tansu) goes to
    the dead letters with its reason, like every other record the pipeline cannot take: it was logged and
    dropped, and its offset committed, so nothing but a log line said it had been there."""
    now = int(time.time() * 1000)
    msgs = [finding(i, now) for i in range(3)]
    msgs.insert(1, Msg(b"\x00garbage", b"k", 0, 99, topic="agentgov.correlations.v1"))
    store = correlation_store(sink, msgs)
    dlq = FakeProducer()
    store.dead_letter = lambda rejected: writer.deliver_dead_letters(
        dlq, "dlq", writer.Limits(), store.metrics, "writer", rejected)
    assert store.poll_once() == 3
    assert [reason(h) for _, _, h in dlq.sent] == ["unknown_schema"]  # registry framing, an id it lacks
    assert dict(dlq.sent[0][2])["agentgov.source.offset"] == b"99"
    assert sink.count("cross_run_findings") == 3 and store.pending == []


def test_a_failing_store_keeps_the_cross_run_batch_pending(
        sink: ClickHouseSink, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure of the store itself (not the data) dead-letters nothing and commits nothing: retried."""
    msgs = [finding(i, int(time.time() * 1000)) for i in range(3)]
    real = sink.insert_rows
    down = [True]

    def failing(*args: Any) -> None:
        if down[0]:
            raise SinkError("insert failed: timeout", table="cross_run_findings", kind="Timeout", data=False)
        real(*args)

    monkeypatch.setattr(sink, "insert_rows", failing)
    store = correlation_store(sink, msgs)
    assert store.poll_once() == 0 and len(store.pending) == 3 and store.consumer.commits == []
    down[0] = False
    assert store.poll_once() == 3 and store.consumer.commits and sink.count("cross_run_findings") == 3


# -- the writer ---------------------------------------------------------------------------------------------
ENCODER = AssessmentEncoder(SCHEMAS, Serde(SCHEMAS, record=ASSESSMENT), "test", load_policy(None))


def transition(occurred_at: int | None = None, **changes: Any) -> dict[str, Any]:
    doc = draft(**changes)
    doc.update(event_id=str(uuid.uuid4()), occurred_at="2026-05-01T10:00:00Z", evidence={"event_hash": "0" * 64})
    rec = AgentTransition.model_validate(doc).to_avro()
    rec["occurred_at"] = occurred_at if occurred_at is not None else int(time.time() * 1000)
    rec["evidence"]["event_hash"] = event_hash(rec)
    return rec


def assessment(rec: dict[str, Any], offset: int, source: tuple[int, int] | None = None,
               scored_at: int | None = None, digest_header: bool = True) -> Msg:
    """The scorer's message for ``rec`` read at transitions ``source`` (default: partition 0 at ``offset``),
    as the writer consumes it from assessments partition 0 at ``offset``; ``digest_header=False``: as an
    older scorer sent it, without the digest of the event's content."""
    partition, src_offset = source or (0, offset)
    value, digest = ENCODER.encode_digested(SERDE.decode(SERDE.encode(rec)), Scored((), 0, "low"), partition,
                                            src_offset, scored_at or int(time.time() * 1000))
    headers = assessment_headers(rec, partition, src_offset, digest)
    if not digest_header:
        headers = [h for h in headers if h[0] != DIGEST_HEADER]
    return Msg(value, rec["event_id"].encode(), 0, offset, topic="agentgov.assessments.v1", headers=headers)


def make_writer(sink: ClickHouseSink) -> Writer:
    w = Writer(Settings(), Metrics(CollectorRegistry()), sink, registry=None)
    w.backoff_max = 0.05
    return w


def test_is_data_error_tells_too_many_partitions_from_too_many_parts() -> None:
    partitions = ("Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). The "
                  "limit is controlled by 'max_partitions_per_insert_block' setting. (TOO_MANY_PARTS)")
    parts = ("Code: 252. DB::Exception: Too many parts (300 with average size of 4.26 KiB) in table "
             "'agentgov.transitions'. Merges are processing significantly slower than inserts: while pushing to "
             "view agentgov.mv_transitions. (TOO_MANY_PARTS)")
    assert is_data_error(252, partitions)
    assert not is_data_error(252, parts)
    assert is_data_error(117, "Code: 117. INCORRECT_DATA") and not is_data_error(159, "Code: 159. TIMEOUT_EXCEEDED")


def test_too_many_parts_is_waited_out_like_an_outage_never_dead_lettered(sink: ClickHouseSink, fakes: None) -> None:
    """ClickHouse answers a table whose merges are behind with 252, the code of a batch over too many
    partitions. The writer took it for bad data and dead-lettered every valid event of the batch as
    store_rejected, then committed; it must retry the batch whole, paused, until the store keeps up."""
    db = sink.database
    sink.client.command(f"SYSTEM STOP MERGES {db}.transitions")
    sink.client.command(f"ALTER TABLE {db}.transitions MODIFY SETTING parts_to_throw_insert = 2, "
                        "parts_to_delay_insert = 1, max_delay_to_insert = 0")
    w = make_writer(sink)
    consumer = w.consumer
    assert isinstance(consumer, FakeConsumer) and isinstance(w.dlq, FakeProducer)
    batches = [[assessment(transition(), 2 * b + i) for i in range(2)] for b in range(3)]
    attempts: list[bool] = []

    def merges_catch_up() -> None:  # while the writer waits between attempts
        attempts.append(consumer.paused)
        sink.client.command(f"ALTER TABLE {db}.transitions MODIFY SETTING parts_to_throw_insert = 300")

    consumer.on_poll = merges_catch_up
    for batch in batches:
        assert w._flush(batch, threading.Event())
    assert attempts and all(attempts)  # it did wait, paused, for the third batch
    assert w.dlq.sent == [] and w.rejected == 0
    assert [c[0].offset for c in consumer.commits] == [2, 4, 6]
    assert sink.count("transitions") == sink.count("assessments") == 6
    sample = w.metrics.registry.get_sample_value
    assert sample("agentgov_sink_errors_total", {"table": "ingest", "kind": "DatabaseError"}) >= 1
    assert not sample("agentgov_poison_records_total", {"role": "writer", "reason": "store_rejected"})


# -- dedup tokens: offsets start again at 0 after a Tansu restart ------------------------------------------
def test_a_new_batch_at_the_offsets_of_a_stored_one_is_stored_and_a_retry_is_not(
        sink: ClickHouseSink, fakes: None) -> None:
    """The token was made of offsets only: after Tansu restarted (in-memory log), a new batch at offsets
    0-0 got the token of the batch stored at 0-0 before and ClickHouse dropped it as a retry, while its
    offsets were committed. The same batch sent again still keeps its token (stored once)."""
    w = make_writer(sink)
    before, after = transition(run_id="run-before-restart"), transition(run_id="run-after-restart")
    assert w._flush([assessment(before, 0, source=(1, 0))], threading.Event())
    assert w._flush([assessment(after, 0, source=(1, 0))], threading.Event())
    runs = {r["run_id"] for r in sink.query("SELECT run_id FROM {db}.transitions FINAL")}
    assert runs == {"run-before-restart", "run-after-restart"}
    again = assessment(after, 0, source=(1, 0))
    assert w._flush([again], threading.Event())
    assert w._flush([again], threading.Event())
    raw = sink.query("SELECT count() AS n FROM {db}.transitions WHERE run_id = 'run-after-restart'")[0]["n"]
    assert raw == 2  # the first copy, and the re-scored one (another scored_at): the retries were dropped


def test_cross_run_findings_at_the_offsets_of_stored_ones_are_stored(sink: ClickHouseSink, fakes: None) -> None:
    now = int(time.time() * 1000)
    store = correlation_store(sink, [finding(0, now)])
    assert store.poll_once() == 1
    store.consumer.msgs = [finding(0, now)]  # the correlations topic starts again at offset 0
    assert store.poll_once() == 1
    assert sink.count("cross_run_findings") == 2


def test_review_decisions_at_the_offsets_of_stored_ones_are_stored(
        sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decision_log, "Consumer", FakeConsumer)
    monkeypatch.setattr(decision_log, "Membership", FakeMembership)
    settings = Settings()
    serde = Serde(SCHEMAS, record="review_decision")

    def decision(offset: int) -> Msg:
        rec = {"decision_id": uuid.uuid4().hex, "kind": "triage", "subject_kind": "finding", "subject_id": "f1",
               "subject_version": 1, "actor": "alice", "actor_roles": ["analyst"],
               "decided_at": int(time.time() * 1000), "from_state": None, "to_state": "triaged",
               "classification": None, "reason": None, "comment": None, "payload": {}}
        return Msg(serde.encode(rec), rec["decision_id"].encode(), 0, offset, topic=settings.topic_decisions)

    log_ = decision_log.DecisionLog(settings, sink, registry=None)
    log_.consumer = FakeConsumer(msgs=[decision(0)])
    assert log_.poll_once() == 1
    log_.consumer.msgs = [decision(0)]
    assert log_.poll_once() == 1
    assert sink.count("decisions") == 2


def test_review_records_that_do_not_decode_or_that_the_store_refuses_are_dead_lettered(
        sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision log treats its records as the writer treats events: one that does not decode, and a row
    the store refuses as data, go to the dead letters with their reasons and the rest is stored and
    committed (a refused row blocked the decisions for good, an undecodable one was only logged). After a
    failure of the store itself the same records are retried, nothing more read, so the retry carries the
    same dedup token."""
    monkeypatch.setattr(decision_log, "Consumer", FakeConsumer)
    monkeypatch.setattr(decision_log, "Membership", FakeMembership)
    settings = Settings()
    serde = Serde(SCHEMAS, record="review_decision")

    def decision(offset: int, actor: str = "alice") -> Msg:
        rec = {"decision_id": uuid.uuid4().hex, "kind": "triage", "subject_kind": "finding", "subject_id": "f1",
               "subject_version": 1, "actor": actor, "actor_roles": ["analyst"],
               "decided_at": int(time.time() * 1000), "from_state": None, "to_state": "triaged",
               "classification": None, "reason": None, "comment": None, "payload": {}}
        return Msg(serde.encode(rec), rec["decision_id"].encode(), 0, offset, topic=settings.topic_decisions)

    real = sink.insert_rows
    outage = [True]

    def refusing(table: str, rows: list[list[Any]], columns: list[str], token: str) -> None:
        if outage[0]:
            outage[0] = False
            raise SinkError("insert failed: connection refused", table=table, kind="OperationalError", data=False)
        if any("poison" in r for r in rows):  # as ClickHouse answers a value it cannot take
            raise SinkError("insert failed: Code: 117. DB::Exception: bad value", table=table, kind="DatabaseError",
                            code=117, data=True)
        real(table, rows, columns, token)

    monkeypatch.setattr(sink, "insert_rows", refusing)
    dead: list[tuple[int, str]] = []
    def dead_letter(rejected: writer.Rejected) -> None:
        dead.extend((m.offset(), e.reason) for m, e in rejected)

    log_ = decision_log.DecisionLog(settings, sink, registry=None, dead_letter=dead_letter)
    msgs = [decision(0), Msg(b"\x00garbage", b"k", 0, 1, topic=settings.topic_decisions), decision(2, "poison"),
            decision(3)]
    log_.consumer = FakeConsumer(msgs=msgs)
    assert log_() is False and dead == []  # the store is down: nothing stored, nothing dead-lettered; back off
    log_.consumer.msgs = [decision(4)]  # arrives meanwhile: not mixed into the retried batch
    assert log_.poll_once() == 2 and not log_.failing
    assert dead == [(1, "unknown_schema"), (2, "store_rejected")]
    assert sink.count("decisions") == 2 and log_.pending == []
    assert log_.poll_once() == 1 and sink.count("decisions") == 3


# -- first copy wins, also at a reused source record --------------------------------------------------------
@pytest.mark.parametrize("digest_header", [True, False], ids=["scorer-digest", "older-scorer"])
def test_a_rewrite_from_the_source_record_of_a_stored_event_never_replaces_it(
        sink: ClickHouseSink, fakes: None, digest_header: bool) -> None:
    """After a Tansu restart (offsets from 0 again) a forged copy of a stored event (same event_id, run,
    step, agent and time; another target, a tier-3 role) can come from the very (partition, offset) the
    original came from. It was taken for a redelivery, went to ``ingest`` and replaced the original (the
    last insert wins). It is a later copy: kept apart with AG-EVD-005, the original stays what every read
    sees. Without the scorer's digest header (an older scorer) the writer reads the digest itself."""
    original = transition(run_id="run-victim", action="assign_role", resource__resource_id="role-reader",
                          resource__privilege_tier=1, target__identity_id="u000777")
    w = make_writer(sink)
    assert w._flush([assessment(original, 10, source=(2, 5), digest_header=digest_header)], threading.Event())
    forged = dict(original, resource=dict(original["resource"], resource_id="role-GLOBAL-ADMIN", privilege_tier=3),
                  target=dict(original["target"], identity_id="u000666"))
    forged["evidence"] = dict(original["evidence"], event_hash=event_hash(forged))
    assert w._flush([assessment(forged, 3, source=(2, 5), digest_header=digest_header)], threading.Event())
    assert sink.query("SELECT target_id, resource_id, event_hash FROM {db}.transitions FINAL") == [
        {"target_id": "u000777", "resource_id": "role-reader", "event_hash": original["evidence"]["event_hash"]}]
    assert sink.query("SELECT target_id FROM {db}.assessments FINAL") == [{"target_id": "u000777"}]
    assert sink.query("SELECT target_id, has(finding_codes, 'AG-EVD-005') AS flagged FROM {db}.duplicates") == [
        {"target_id": "u000666", "flagged": 1}]
    assert w.metrics.registry.get_sample_value("agentgov_duplicate_events_total") == 1


def test_a_redelivery_and_a_rescore_of_a_stored_event_are_not_duplicates(sink: ClickHouseSink, fakes: None) -> None:
    """The same record again (a redelivery), and the same event scored again (a scorer replayed it after a
    crash: another scored_at, the same content), go to ``ingest`` as before: stored once, no AG-EVD-005."""
    rec = transition(run_id="run-again")
    w = make_writer(sink)
    first = assessment(rec, 0, source=(1, 7), scored_at=1_800_000_000_000)
    assert w._flush([first], threading.Event())
    assert w._flush([first], threading.Event())  # redelivered
    assert w._flush([assessment(rec, 1, source=(1, 7), scored_at=1_800_000_000_500)], threading.Event())
    assert sink.query("SELECT count() AS n FROM {db}.duplicates")[0]["n"] == 0
    rows = sink.query("SELECT toUnixTimestamp64Milli(scored_at) AS at FROM {db}.assessments FINAL")
    assert rows == [{"at": 1_800_000_000_500}]


def test_an_event_stored_before_digests_is_matched_by_its_source_alone(
        chdb_path: Path, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store migrated to 008 with events in it: those have no digest (''), so a copy from their source
    record is a redelivery, as before (what 008 cannot tell for them); a copy from another source record is
    still a duplicate. The writer's rows from then on carry their digest."""
    sink = ClickHouseSink(open_embedded(chdb_path), f"u{uuid.uuid4().hex[:12]}")
    everything = migrations()
    monkeypatch.setattr(clickhouse, "migrations", lambda: [m for m in everything if m[0] < 7])
    sink.migrate()
    rec = transition(run_id="run-old")
    old = assessment(rec, 0, source=(1, 3))  # as the writer stored it before 008: the datum alone
    sink.insert_assessments(ContainerBuilder(SCHEMAS.assessment.raw).build([old.value()[SOE_HEADER:]]), "old")
    monkeypatch.setattr(clickhouse, "migrations", lambda: everything)
    assert 7 in sink.migrate()
    assert sink.stored_sources([rec["event_id"]]) == {rec["event_id"]: {(1, 3, "")}}
    w = make_writer(sink)
    other = dict(rec, target=dict(rec["target"], identity_id="u-other"))
    assert w._flush([assessment(other, 1, source=(1, 3))], threading.Event())
    assert sink.query("SELECT count() AS n FROM {db}.duplicates")[0]["n"] == 0
    assert w._flush([assessment(other, 2, source=(0, 3))], threading.Event())
    assert sink.query("SELECT count() AS n FROM {db}.duplicates")[0]["n"] == 1
    new = transition(run_id="run-new")
    assert w._flush([assessment(new, 3, source=(1, 4))], threading.Event())
    assert sink.stored_sources([new["event_id"]]) == {new["event_id"]: {(1, 4, transition_digest(
        SERDE.decode(SERDE.encode(new)).datum))}}


def test_a_rewrite_in_the_batch_of_its_original_is_a_duplicate(sink: ClickHouseSink, fakes: None) -> None:
    """Within one batch the first copy is claimed with its digest: a second copy from the same source record
    with other content is kept apart, the same copy again is not."""
    original = transition(run_id="run-batch", target__identity_id="u-1")
    forged = dict(original, target=dict(original["target"], identity_id="u-2"))
    w = make_writer(sink)
    same = assessment(original, 0, source=(4, 4))
    batch = [same, assessment(forged, 1, source=(4, 4)), assessment(original, 2, source=(4, 4))]
    assert w._flush(batch, threading.Event())
    assert sink.query("SELECT target_id FROM {db}.transitions FINAL") == [{"target_id": "u-1"}]
    assert sink.query("SELECT target_id FROM {db}.duplicates") == [{"target_id": "u-2"}]



def _forged(original: dict[str, Any]) -> dict[str, Any]:
    """The audit's forgery: the stored event's id, run, step, agent and time; a revoke of a reader role
    instead of a tier-3 grant."""
    forged = dict(original, action="remove_role",
                  resource=dict(original["resource"], resource_id="role/Reader", privilege_tier=0))
    forged["evidence"] = dict(original["evidence"], event_hash=event_hash(forged))
    return forged


def test_an_assessment_keyed_other_than_its_event_id_is_dead_lettered_never_stored(
        sink: ClickHouseSink, fakes: None) -> None:
    """The writer took the event id for first-copy-wins from the Kafka key: a forged copy of a stored event
    (same event_id in its payload, other content) keyed ``not-the-event-id`` was a new id to the check, went
    to ``ingest`` and replaced the stored event in every table. The id is the payload's; a record whose key
    disagrees was not written by a scorer (it keys by event_id): dead-lettered with its reason, so it neither
    replaces a stored event nor claims a new id first. Its neighbours are stored, the batch committed."""
    original = transition(run_id="run-victim", action="assign_role", resource__resource_id="role/GlobalAdmin",
                          resource__privilege_tier=3)
    w = make_writer(sink)
    assert isinstance(w.dlq, FakeProducer)
    assert w._flush([assessment(original, 0)], threading.Event())
    forged = assessment(_forged(original), 1)
    forged._key = b"not-the-event-id"
    fresh, neighbour = transition(run_id="run-fresh"), transition(run_id="run-neighbour")
    unkeyed = assessment(fresh, 2)
    unkeyed._key = b"other"
    assert w._flush([forged, unkeyed, assessment(neighbour, 3)], threading.Event())
    assert sink.query("SELECT action, privilege_tier, resource_id FROM {db}.transitions FINAL "
                      "WHERE event_id = {e:String}", {"e": original["event_id"]}) == [
        {"action": "assign_role", "privilege_tier": 3, "resource_id": "role/GlobalAdmin"}]
    assert sink.query("SELECT action FROM {db}.assessments FINAL WHERE event_id = {e:String}",
                      {"e": original["event_id"]}) == [{"action": "assign_role"}]
    assert {r["run_id"] for r in sink.query("SELECT run_id FROM {db}.transitions FINAL")} == {
        "run-victim", "run-neighbour"}
    assert sink.query("SELECT count() AS n FROM {db}.duplicates")[0]["n"] == 0
    letters = [dict(h) for _, _, h in w.dlq.sent]
    assert [(h["agentgov.error.reason"], h["agentgov.error.field"], h["agentgov.source.offset"]) for h in letters] == [
        (b"invalid_value", b"key", b"1"), (b"invalid_value", b"key", b"2")]
    assert original["event_id"].encode() in letters[0]["agentgov.error.message"]
    assert w.consumer.commits[-1][0].offset == 4


@pytest.mark.parametrize("together", [False, True], ids=["after-the-original", "in-its-batch"])
def test_a_copy_repeating_the_originals_source_and_digest_headers_never_replaces_it(
        sink: ClickHouseSink, fakes: None, monkeypatch: pytest.MonkeyPatch, together: bool) -> None:
    """The digest header is the sender's word: a forged copy under the right key, with the original's
    ``agentgov.source.*`` and digest headers copied over other content, passed as a redelivery and replaced
    the original. The digest of a copy of a known id is computed from its datum, so it is a later copy (kept
    apart with AG-EVD-005); the first copy of an id is not read past its head (the writer's fast path)."""
    computed: list[bytes] = []
    real_digest = writer._digest
    monkeypatch.setattr(writer, "_digest", lambda datum, head: computed.append(datum) or real_digest(datum, head))
    original = transition(run_id="run-victim", action="assign_role", resource__resource_id="role/GlobalAdmin",
                          resource__privilege_tier=3)
    w = make_writer(sink)
    first = assessment(original, 0, source=(3, 9))
    forged = assessment(_forged(original), 1, source=(3, 10))
    forged._headers = list(first.headers())
    if together:
        assert w._flush([first, forged], threading.Event())
    else:
        assert w._flush([first], threading.Event())
        assert computed == []  # a new id: the scorer's digest is stored as sent
        assert w._flush([forged], threading.Event())
    assert sink.query("SELECT action, privilege_tier FROM {db}.transitions FINAL") == [
        {"action": "assign_role", "privilege_tier": 3}]
    assert sink.query("SELECT action FROM {db}.assessments FINAL") == [{"action": "assign_role"}]
    assert sink.query("SELECT action, has(finding_codes, 'AG-EVD-005') AS flagged FROM {db}.duplicates") == [
        {"action": "remove_role", "flagged": 1}]
    assert len(computed) == (2 if together else 1)  # the copy's (and, in one batch, its claimant's)
    assert sink.stored_sources([original["event_id"]]) == {original["event_id"]: {(3, 9, transition_digest(
        SERDE.decode(SERDE.encode(original)).datum))}}

EXIT_CHECK = """
import atexit, sys
from pipeline.sinks.clickhouse import open_embedded
closed = []
atexit.register(lambda: print("closed before chdb's exit hook" if closed else "left open", flush=True))
client = open_embedded(sys.argv[1])
client.command("CREATE DATABASE IF NOT EXISTS exit_check")
close = client.close
def recording_close():
    import chdb  # noqa: F401 - already imported: the engine is still up when the client is closed
    closed.append(client.command("SELECT 1"))
    close()
client.close = recording_close
"""


def test_an_embedded_store_left_open_is_closed_before_the_process_exits(tmp_path: Path) -> None:
    """chdb can die with SIGSEGV when the interpreter exits with a connection open (chdb-core#177), which
    turns a clean exit into a crash. Every embedded client is closed by an exit hook that runs before chdb's
    own: the client answers a query as it is closed (the engine is still up), and the report hook, registered
    before the client was opened, runs after that close."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", EXIT_CHECK, str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "closed before chdb's exit hook"


STUCK_AT_EXIT = """
import sys, threading
from pipeline.sinks import clickhouse
clickhouse.EXIT_CLOSE_SECONDS = 1.0
client = clickhouse.open_embedded(sys.argv[1])
client.command("CREATE DATABASE IF NOT EXISTS exit_check")
client.close = lambda: threading.Event().wait()  # as a close behind a query that never returns
"""


def test_a_client_that_cannot_close_does_not_hold_the_exit(tmp_path: Path) -> None:
    """A close waits for its client's query in flight; one that never ends must not keep the process from
    exiting: the exit hook gives the closes EXIT_CLOSE_SECONDS, then says so and lets the exit go on."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STUCK_AT_EXIT, str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=60)
    assert "embedded store clients still busy at exit" in done.stderr, done.stderr[-2000:]


def test_writer_tasks_back_off_while_they_fail_and_resume_their_interval_on_success() -> None:
    """A task that fails (returns False) waits twice its interval, then doubles up to the cap, never less than
    its interval; its first success restores the interval. The others keep theirs."""
    now = [0.0]
    tasks = writer.Tasks(backoff_max=20.0, clock=lambda: now[0])
    outcomes: list[bool] = []
    runs: list[float] = []
    slow: list[float] = []

    def flaky() -> bool:
        runs.append(now[0])
        return outcomes.pop(0) if outcomes else True

    tasks.add(1.0, flaky)
    tasks.add(300.0, lambda: slow.append(now[0]) or False)  # fails: its backoff is never below its interval
    outcomes.extend([False] * 8 + [True, True])
    while now[0] < 700:
        tasks.run()
        now[0] += 0.5
    waits = [b - a for a, b in itertools.pairwise(runs)]
    assert waits[:9] == [2, 4, 8, 16, 20, 20, 20, 20, 1]
    assert slow == [300.0, 600.0]


def test_a_failing_store_makes_the_scheduled_stores_report_failure(
        sink: ClickHouseSink, fakes: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-run findings store and the decision log tell the writer's scheduler an attempt failed, so it
    backs off; the attempt that succeeds tells it so too."""
    store = correlation_store(sink, [finding(1, 1_700_000_000_000)])

    insert, down = sink.insert_rows, [True]

    def failing(*args: Any) -> None:
        if down:
            raise SinkError("store unreachable", kind="OperationalError")
        insert(*args)

    monkeypatch.setattr(sink, "insert_rows", failing)
    assert store() is False and store.pending
    down.clear()
    assert store() is True and not store.pending and store.stored == 1


# -- records whose times the store cannot hold (audit P3) ------------------------------------------------------
FAR = 2**62  # ms: schema-valid, past year 9999 (Python's datetime) and 2299 (DateTime64(3))


def test_check_store_time_takes_the_store_range_and_names_the_field() -> None:
    from pipeline.errors import ValidationError
    from pipeline.limits import STORE_TIME_MAX_MS, STORE_TIME_MIN_MS, check_store_time

    assert check_store_time(0, "t") == 0
    assert check_store_time(STORE_TIME_MIN_MS, "t") == STORE_TIME_MIN_MS
    assert check_store_time(STORE_TIME_MAX_MS, "t") == STORE_TIME_MAX_MS
    for bad in (STORE_TIME_MAX_MS + 1, STORE_TIME_MIN_MS - 1, FAR, -(2**63), 2**63 - 1, 1.5, None, True):
        with pytest.raises(ValidationError) as err:
            check_store_time(bad, "expires_at")
        assert err.value.reason == "invalid_value" and err.value.fields["field"] == "expires_at"


@pytest.mark.parametrize("field", ["occurred_at", "detected_at"])
def test_a_cross_run_finding_with_a_time_out_of_range_is_dead_lettered_and_the_rest_stored(
        sink: ClickHouseSink, fakes: None, field: str) -> None:
    """A schema-valid finding stamped past year 9999 raised ValueError while its row was built, outside the
    per-record handling: it escaped the writer's loop, which restarted and read it again, for ever."""
    now = int(time.time() * 1000)
    msgs = [finding(i, now) for i in range(3)]
    rec = FINDINGS.decode(msgs[1].value()).record
    rec[field] = FAR
    msgs[1] = Msg(FINDINGS.encode(rec), b"k", 0, 1, topic="agentgov.correlations.v1")
    store = correlation_store(sink, msgs)
    dlq = FakeProducer()
    store.dead_letter = lambda rejected: writer.deliver_dead_letters(
        dlq, "dlq", writer.Limits(), store.metrics, "writer", rejected)
    assert store.poll_once() == 2 and not store.failing
    assert [reason(h) for _, _, h in dlq.sent] == ["invalid_value"]
    assert dict(dlq.sent[0][2])["agentgov.error.field"] == field.encode()
    assert dict(dlq.sent[0][2])["agentgov.source.offset"] == b"1"
    assert store.consumer.commits[0][0].offset == 3 and store.pending == []
    assert sink.count("cross_run_findings") == 2


def test_review_records_with_a_time_out_of_range_are_dead_lettered_and_the_rest_stored(
        sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """A decision's ``decided_at`` or an exception's ``expires_at`` past year 9999: dead-lettered (invalid_value,
    naming the field), the others stored and every offset committed."""
    monkeypatch.setattr(decision_log, "Consumer", FakeConsumer)
    monkeypatch.setattr(decision_log, "Membership", FakeMembership)
    settings = Settings()
    decisions, exceptions = Serde(SCHEMAS, record="review_decision"), Serde(SCHEMAS, record="risk_exception")
    now = int(time.time() * 1000)

    def decision(offset: int, decided_at: int) -> Msg:
        rec = {"decision_id": uuid.uuid4().hex, "kind": "triage", "subject_kind": "finding", "subject_id": "f1",
               "subject_version": 1, "actor": "alice", "actor_roles": [], "decided_at": decided_at,
               "from_state": None, "to_state": "triaged", "classification": None, "reason": None, "comment": None,
               "payload": {}}
        return Msg(decisions.encode(rec), b"k", 0, offset, topic=settings.topic_decisions)

    def exception(offset: int, expires_at: int) -> Msg:
        rec = {"exception_id": uuid.uuid4().hex, "version": 1, "state": "active", "code": "AG-AUTH-001",
               "agent_id": "a", "workflow_id": None, "target_id": None, "entitlement": None, "justification": "j",
               "requester": "r", "approver": "x", "requested_at": now, "effective_at": now,
               "expires_at": expires_at, "ended_at": None, "updated_by": "u", "updated_at": now}
        return Msg(exceptions.encode(rec), b"k", 0, offset, topic=settings.topic_exceptions)

    dead: list[tuple[str, int, str, Any]] = []
    log_ = decision_log.DecisionLog(settings, sink, registry=None, dead_letter=lambda rejected: dead.extend(
        (m.topic(), m.offset(), e.reason, e.fields.get("field")) for m, e in rejected))
    log_.consumer = FakeConsumer(msgs=[decision(0, now), decision(1, FAR), decision(2, now),
                                       exception(0, FAR), exception(1, now + DAY_MS)])
    assert log_.poll_once() == 3 and not log_.failing
    assert dead == [(settings.topic_decisions, 1, "invalid_value", "decided_at"),
                    (settings.topic_exceptions, 0, "invalid_value", "expires_at")]
    assert sink.count("decisions") == 2 and sink.count("exceptions") == 1
    assert sorted((tp.topic, tp.offset) for tp in log_.consumer.commits[0]) == [
        (settings.topic_decisions, 3), (settings.topic_exceptions, 2)]


def test_a_writer_task_that_raises_is_retried_with_backoff_and_does_not_end_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    """The last line behind the per-record handling: a task's exception escaped ``Tasks.run`` and ended the
    writer's loop (restarted, it met the same record again). Now it is logged, backed off, and the other
    tasks keep their interval."""
    now = [0.0]
    tasks = writer.Tasks(backoff_max=8.0, clock=lambda: now[0])
    raised: list[float] = []
    others: list[float] = []

    def poisoned() -> bool:
        raised.append(now[0])
        raise ValueError("year 146140482 is out of range")

    tasks.add(1.0, poisoned)
    tasks.add(1.0, lambda: others.append(now[0]) or True)
    while now[0] < 30:
        tasks.run()
        now[0] += 0.5
    assert [b - a for a, b in itertools.pairwise(raised)][:4] == [2, 4, 8, 8]
    assert len(others) == 29
    assert any(r.getMessage() == "writer task failed; will retry" for r in caplog.records)


def test_an_assessment_with_a_garbage_occurred_at_header_is_stored(sink: ClickHouseSink, fakes: None) -> None:
    """The latency histogram read the ``occurred_at`` header with int(): a header that is not a number raised
    after the batch was stored and committed, and ended the writer's loop."""
    w = make_writer(sink)
    msgs = [assessment(transition(), i) for i in range(2)]
    for m, bad in zip(msgs, (b"not-a-number", b"9" * 5000), strict=True):
        m._headers = [(k, bad if k == "occurred_at" else v) for k, v in m.headers()]
        assert bad in dict(m.headers()).values()
    assert w._flush(msgs, threading.Event()) and w.stored == 2
    assert sink.count("transitions") == 2
