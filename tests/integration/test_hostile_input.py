"""Hostile input through the real broker and store: no single event may stop a partition.

Each case is sent, then ordinary events after it; every test asserts that those later events are stored
(the pipeline keeps flowing), that produced = stored + dead-lettered, and that the right dead-letter
reason or finding appears. Sizes are the real ones (1,000,000-byte records), not a lowered limit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Message, Producer

from pipeline.assessment import AssessmentEncoder
from pipeline.deadletters import header
from pipeline.drafts import apply, draft
from pipeline.limits import (
    ATTRIBUTE_VALUE_MAX_CHARS,
    ATTRIBUTES_MAX,
    DAY_MS,
    IDENT_MAX_CHARS,
    STEP_MAX,
    Limits,
)
from pipeline.publisher import EventInvalid, TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.schemas import ASSESSMENT, SchemaSet
from pipeline.scoring.engine import Scored
from pipeline.scoring.policy import load_policy
from pipeline.serde import Serde
from pipeline.settings import Settings
from tests.support.helpers import Bus, InProcess, consume, wait_until

pytestmark = pytest.mark.integration
SCHEMAS = SchemaSet.load()
SERDE = Serde(SCHEMAS)


def raw_producer(settings: Settings) -> Producer:
    return Producer(settings.kafka_config(**{"enable.idempotence": True, "acks": "all"}))


def sized(pub: TransitionPublisher, size: int, **changes: Any) -> dict[str, Any]:
    """A completed record whose encoded form is exactly ``size`` bytes (grown through ``attributes``, each
    value within the attribute limit)."""
    rec = pub.complete(draft(run_id=f"run-size-{uuid.uuid4().hex[:8]}", **changes))
    attrs: dict[str, str] = {}
    rec["attributes"] = attrs
    rest = size - len(SERDE.encode(rec))
    while rest > ATTRIBUTE_VALUE_MAX_CHARS:  # whole values, leaving 4 KB or so for the pad
        attrs[f"k{len(attrs):03d}"] = "x" * min(ATTRIBUTE_VALUE_MAX_CHARS, rest - 4096)
        rest = size - len(SERDE.encode(rec))
    attrs["pad"] = ""
    for _ in range(4):  # the pad's length prefix may grow by a byte: converge
        rest = size - len(SERDE.encode(rec))
        attrs["pad"] = "p" * (len(attrs["pad"]) + rest)
    assert len(SERDE.encode(rec)) == size
    return rec


def dlq_by_source(settings: Settings, count: int) -> dict[tuple[int, int], Message]:
    """Dead letters by source (partition, offset): a re-cut batch may repeat one; the source identifies it."""
    dead = consume(settings, settings.topic_dlq, count, timeout=60, settle=1.0)
    return {(int(header(m.headers(), "agentgov.source.partition") or -1),
             int(header(m.headers(), "agentgov.source.offset") or -1)): m for m in dead}


def stored_ids(pipe: InProcess | Pipeline) -> set[str]:
    return {r["event_id"] for r in pipe.sink.query("SELECT event_id FROM {db}.transitions FINAL")}


def flowing(pipe: InProcess | Pipeline, pub: TransitionPublisher, n: int = 5) -> set[str]:
    """Publish ``n`` ordinary events after the hostile ones; assert they are stored within seconds."""
    ids = {pub.publish(draft(run_id=f"run-after-{uuid.uuid4().hex[:8]}")) for _ in range(n)}
    pub.flush()
    assert wait_until(lambda: ids <= stored_ids(pipe), 60), "events after the hostile input were not stored"
    return ids


def test_sizes_at_the_real_one_megabyte_limit(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    settings = settings_factory()
    limits = Limits.from_settings(settings)
    assert settings.max_message_bytes == 1_000_000 and limits.event_bytes == 934_464
    pipe = in_process(settings)
    pub = publisher_factory(settings)
    raw = raw_producer(settings)

    # The SDK (and so `agentgov publish`) refuses an event over the limit before sending anything.
    with pytest.raises(EventInvalid, match=r"exceeds the \d+-byte limit"):
        pub.send(sized(pub, limits.event_bytes + 1))
    at_limit = sized(pub, limits.event_bytes)
    pub.send(at_limit)
    pub.flush()
    # What a client without the SDK can send: just over the limit, and the ~1 MB record of the report.
    over = sized(pub, limits.event_bytes + 1)
    huge = sized(pub, 999_000)
    offsets: dict[str, int] = {}

    def note(name: str) -> Callable[[Any, Message], None]:
        def cb(err: Any, msg: Message) -> None:
            assert err is None, err
            offsets[name] = msg.offset()
        return cb

    for name, rec in (("over", over), ("huge", huge)):
        raw.produce(settings.topic_transitions, SERDE.encode(rec), key=rec["run_id"].encode(), on_delivery=note(name))
    assert raw.flush(30) == 0
    after = flowing(pipe, pub)

    dead = dlq_by_source(settings, 2)
    assert {header(m.headers(), "agentgov.error.reason") for m in dead.values()} == {"oversized"}
    huge_dead = next(m for m in dead.values() if header(m.headers(), "agentgov.payload.bytes") == str(999_000))
    assert header(huge_dead.headers(), "agentgov.payload.truncated") == "1"
    assert len(huge_dead.value()) == limits.dlq_payload_bytes
    ids = stored_ids(pipe)
    assert at_limit["event_id"] in ids and over["event_id"] not in ids and huge["event_id"] not in ids
    # Accounting: 1 + 2 + 5 produced = stored + dead-lettered.
    assert len(ids) + len(dead) == 1 + 2 + len(after)


def test_a_record_larger_than_a_fetch_response_is_dead_lettered_not_a_stall(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    """Tansu (this test's broker) takes a record of any size; Kafka refuses one over its ``message.max.bytes``
    at the producer. One over librdkafka's default ``receive.message.max.bytes`` (100 MB) made every fetch of
    its partition fail, so the events after it on that partition were never scored and nothing said why."""
    settings = settings_factory()
    pipe = in_process(settings)
    pub = publisher_factory(settings)
    run = f"run-giant-{uuid.uuid4().hex[:8]}"
    giant = Producer(settings.kafka_config(**{"message.max.bytes": 200_000_000, "linger.ms": 0}))
    size = 100_000_001
    giant.produce(settings.topic_transitions, b"\xc3\x01" + bytes(size - 2), key=run.encode())
    assert giant.flush(120) == 0
    behind = {pub.publish(draft(run_id=run)) for _ in range(3)}  # its key: its partition, after it
    pub.flush()
    assert wait_until(lambda: behind <= stored_ids(pipe), 120), "events behind the giant record were not scored"
    (dead,) = dlq_by_source(settings, 1).values()
    assert header(dead.headers(), "agentgov.error.reason") == "oversized"
    assert header(dead.headers(), "agentgov.payload.bytes") == str(size)
    assert header(dead.headers(), "agentgov.payload.truncated") == "1"
    assert len(dead.value()) == Limits.from_settings(settings).dlq_payload_bytes


def _raw(pub: TransitionPublisher, **changes: Any) -> dict[str, Any]:
    return apply(pub.complete(draft(run_id=f"run-b-{uuid.uuid4().hex[:8]}")), changes)


def _zz(n: int, size: int = 0) -> bytes:
    """Avro's zigzag varint of ``n``; with ``size``, spread over that many bytes (overlong)."""
    u, out = (n << 1) ^ (n >> 63), bytearray()
    while u >> 7 or len(out) < size - 1:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    return bytes(out) + bytes([u])


def _crafted(pub: TransitionPublisher) -> dict[str, tuple[bytes, str, str]]:
    """Bytes only a client without the SDK sends (a dict cannot repeat a key, no encoder writes an 11-byte
    varint, the SDK refuses 257 entries): name -> (message, dead-letter reason, field)."""
    def text(value: str) -> bytes:
        return _zz(len(value)) + value.encode()

    repeated = SERDE.encode(_raw(pub, attributes={"aa": "approved-by-ciso", "bb": "denied-by-ciso"}))
    pattern = text("aa") + text("approved-by-ciso") + text("bb")
    repeated = repeated.replace(pattern, text("aa") + text("approved-by-ciso") + text("aa"))
    many = _raw(pub)
    many["inputs_used"] = [{"name": "", "source": ""}] * 460_000  # ~920 KB, under the event limit
    step = _raw(pub, step=1234567)
    assert SERDE.encode(step).count(_zz(1234567)) == 1
    overlong = SERDE.encode(step).replace(_zz(1234567), _zz(1234567, 11))
    return {"attributes_repeated_key": (repeated, "invalid_value", "attributes"),
            "inputs_460k": (SERDE.encode(many), "invalid_value", "inputs_used"),
            "step_11_byte_varint": (overlong, "malformed", "")}


def test_bounds_of_every_narrowed_value(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    settings = settings_factory()
    pipe = in_process(settings)
    pub = publisher_factory(settings)
    raw = raw_producer(settings)
    now = int(time.time() * 1000)
    age = settings.event_age_days * DAY_MS
    accepted = {
        "step_max": _raw(pub, step=STEP_MAX),
        "tier_3": _raw(pub, **{"resource.privilege_tier": 3}),
        "ident_512": _raw(pub, from_state="s" * IDENT_MAX_CHARS),
        "attributes_256": _raw(pub, attributes={f"k{i}": "v" for i in range(ATTRIBUTES_MAX)}),
        "almost_too_old": _raw(pub, occurred_at=now - age + 3_600_000),
        "skew_inside": _raw(pub, occurred_at=now + 60_000),
    }
    rejected = {  # name -> the field the dead letter names
        "step_int32_overflow": (_raw(pub, step=STEP_MAX + 6), "step"),
        "step_2_pow_40": (_raw(pub, step=2**40), "step"),
        "tier_4": (_raw(pub, **{"resource.privilege_tier": 4}), "resource.privilege_tier"),
        "ident_513": (_raw(pub, from_state="s" * (IDENT_MAX_CHARS + 1)), "from_state"),
        "key_id_513": (_raw(pub, **{"evidence.key_id": "k" * 513}), "evidence.key_id"),
        "attributes_257": (_raw(pub, attributes={f"k{i}": "v" for i in range(ATTRIBUTES_MAX + 1)}), "attributes"),
        "decades_old": (_raw(pub, occurred_at=now - 30 * 365 * DAY_MS), "occurred_at"),
        "just_too_old": (_raw(pub, occurred_at=now - age - 3_600_000), "occurred_at"),
        "decades_ahead": (_raw(pub, occurred_at=now + 30 * 365 * DAY_MS), "occurred_at"),
        "upper_case_uuid": (_raw(pub, event_id=str(uuid.uuid4()).upper()), "event_id"),
        "input_name_newline": (_raw(pub, inputs_used=[{"name": "dept\n    allowed_systems: null", "source": "hr"}]),
                               "inputs_used.name"),
    }
    for rec in accepted.values():
        raw.produce(settings.topic_transitions, SERDE.encode(rec), key=rec["run_id"].encode())
    for rec, _ in rejected.values():
        raw.produce(settings.topic_transitions, SERDE.encode(rec), key=rec["run_id"].encode())
    crafted = _crafted(pub)  # refused while decoding: the SDK cannot produce them
    for data, _, _ in crafted.values():
        raw.produce(settings.topic_transitions, data, key=b"run-crafted")
    assert raw.flush(30) == 0
    # The SDK refuses the same records before they leave the process.
    for name, (rec, field) in rejected.items():
        with pytest.raises(EventInvalid) as caught:
            pub.send(rec)
        assert field in str(caught.value), (name, caught.value)
    after = flowing(pipe, pub)

    dead = dlq_by_source(settings, len(rejected) + len(crafted))
    answers = sorted((header(m.headers(), "agentgov.error.reason") or "", header(m.headers(), "agentgov.error.field")
                      or "") for m in dead.values())
    assert answers == sorted([("invalid_value", f) for _, f in rejected.values()]
                             + [(reason, f) for _, reason, f in crafted.values()])
    ids = stored_ids(pipe)
    assert {r["event_id"] for r in accepted.values()} <= ids
    assert len(ids) + len(dead) == len(accepted) + len(rejected) + len(crafted) + len(after)
    steps = {r["step"] for r in pipe.sink.query("SELECT step FROM {db}.transitions FINAL")}
    assert STEP_MAX in steps


def _assessment(rec: dict[str, Any], encoder: AssessmentEncoder, offset: int) -> bytes:
    decoded = SERDE.decode(SERDE.encode(rec))
    return encoder.encode(decoded, Scored((), 0, "low"), 0, offset, int(time.time() * 1000))


def test_writer_isolates_rows_the_store_refuses(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess], caplog: pytest.LogCaptureFixture,
) -> None:
    """Assessments already on the topic (e.g. scored before a limit existed) that ClickHouse refuses: an
    Avro int overflow (one row) and a batch spanning 120 daily partitions (error 252: no row is bad)."""
    settings = settings_factory(writer_batch_rows=5000, writer_batch_seconds=1.0)
    pub = publisher_factory(settings)
    encoder = AssessmentEncoder(SCHEMAS, Serde(SCHEMAS, record=ASSESSMENT), "test", load_policy(None))
    now = int(time.time() * 1000)
    spread = [_raw(pub, occurred_at=now - day * DAY_MS) for day in range(120)]
    overflow = _raw(pub, step=2**31 + 5)
    neighbours = [_raw(pub) for _ in range(4)]
    raw = raw_producer(settings)
    for i, rec in enumerate(spread):  # one partition, so they are one batch for the writer
        raw.produce(settings.topic_assessments, _assessment(rec, encoder, i), key=rec["event_id"].encode(),
                    partition=0)
    assert raw.flush(30) == 0
    pipe = in_process(settings)  # started after the records are on the topic: they arrive as one batch
    assert wait_until(lambda: pipe.writer.stored >= len(spread), 60)
    for i, rec in enumerate([neighbours[0], neighbours[1], overflow, neighbours[2], neighbours[3]]):
        raw.produce(settings.topic_assessments, _assessment(rec, encoder, 1000 + i), key=rec["event_id"].encode(),
                    partition=0)
    assert raw.flush(30) == 0
    records = [*spread, overflow, *neighbours]
    assert wait_until(lambda: pipe.writer.stored >= len(records), 60)
    after = flowing(pipe, pub)
    ids = stored_ids(pipe)
    assert {r["event_id"] for r in [*spread, *neighbours]} <= ids and overflow["event_id"] not in ids
    dead = dlq_by_source(settings, 1)
    assert list(dead) == [(0, 122)]  # the overflow: third of the second lot
    msg = dead[(0, 122)]
    assert header(msg.headers(), "agentgov.error.reason") == "store_rejected"
    assert "Avro int" in (header(msg.headers(), "agentgov.error.message") or "")
    assert header(msg.headers(), "agentgov.source.topic") == settings.topic_assessments
    assert len(ids) + len(dead) == len(records) + len(after)
    sample = pipe.metrics.registry.get_sample_value
    assert sample("agentgov_poison_records_total", {"role": "writer", "reason": "store_rejected"}) == 1
    assert sample("agentgov_dead_letters_total", {"reason": "store_rejected"}) == 1
    isolating = "store refused a batch's data; isolating the rows"
    codes = {getattr(r, "kv", {}).get("code") for r in caplog.records if r.getMessage() == isolating}
    assert {252, 1001} <= codes, codes  # both refusals were met, and bisected
    # A refused row is the data's fault, not the store's: no store-error series, no pause.
    assert not sample("agentgov_sink_errors_total", {"table": "ingest", "kind": "DatabaseError"})


def test_a_later_copy_never_replaces_the_original(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    """A rewritten copy (same event_id, risk 80 turned to ~0, new hash) and a byte-identical signed replay,
    both published later under other keys, and a replay under the run's own key (its partition): trail and
    export still show the original; all copies are kept apart with AG-EVD-005; nothing is replaced,
    whichever partition each copy came through. The copy on the original's partition emits no access fact
    (the correlator must not count its grant again)."""
    settings = settings_factory(signing_keys={"k-agent": "s3cret-agent"})
    pipe = in_process(settings)
    pub = publisher_factory(settings, signing_key=("k-agent", b"s3cret-agent"))
    original = pub.complete(draft(run_id="run-orig", action="assign_role", **{
        "resource.resource_id": "role/GlobalAdmin", "resource.privilege_tier": 3}))
    pub.send(original)
    pub.flush()
    assert wait_until(lambda: original["event_id"] in stored_ids(pipe), 60)
    from pipeline.audit import export, render_trail, trail
    from pipeline.events import event_hash, sign

    before = trail(pipe.sink, "run-orig")
    assert before[0]["risk_score"] >= 50, before

    rewritten = dict(original, action="remove_role", resource={**original["resource"], "privilege_tier": 0})
    rewritten["evidence"] = dict(original["evidence"], event_hash=event_hash(rewritten))
    rewritten["evidence"]["signature"] = sign(rewritten, b"s3cret-agent")
    raw = raw_producer(settings)
    keys = [b"another-key-1", b"another-key-2"]  # other partitions than run-orig's, most likely
    raw.produce(settings.topic_transitions, SERDE.encode(rewritten), key=keys[0])
    raw.produce(settings.topic_transitions, SERDE.encode(original), key=keys[1])  # byte-identical replay
    raw.produce(settings.topic_transitions, SERDE.encode(original), key=b"run-orig")  # on its own partition
    assert raw.flush(30) == 0
    after = flowing(pipe, pub)
    assert wait_until(lambda: pipe.metrics.registry.get_sample_value("agentgov_duplicate_events_total") == 3, 60)

    rows = pipe.sink.query("SELECT action, privilege_tier FROM {db}.transitions FINAL WHERE event_id = {e:String}",
                           {"e": original["event_id"]})
    assert rows == [{"action": "assign_role", "privilege_tier": 3}]
    now = trail(pipe.sink, "run-orig")
    assert [(s["action"], s["risk_score"]) for s in now] == [(s["action"], s["risk_score"]) for s in before]
    assert len(now[0]["later_copies"]) == 3
    assert all("AG-EVD-005" in c["finding_codes"] for c in now[0]["later_copies"])
    text = render_trail(now)
    assert text.count("AG-EVD-005 critical: a later copy") == 3 and "remove_role" in text
    from datetime import UTC, datetime, timedelta

    exported = list(export(pipe.sink, since=datetime.now(UTC) - timedelta(days=1),
                           until=datetime.now(UTC) + timedelta(days=1), min_score=50))
    mine = [r for r in exported if r["event_id"] == original["event_id"]]
    assert len(mine) == 1 and mine[0]["action"] == "assign_role" and len(mine[0]["later_copies"]) == 3
    # Accounting: every produced record is stored, kept apart, or dead-lettered (none here).
    kept_apart = pipe.sink.query("SELECT count() AS n FROM {db}.duplicates")[0]["n"]
    assert len(stored_ids(pipe)) + kept_apart == 1 + 3 + len(after)
    # Access facts of the original's partition: one for the event_id, the original's (not the replay's).
    from pipeline.facts import FACT

    facts = Serde(SCHEMAS, record=FACT)
    home = next(r["source_partition"] for r in pipe.sink.query(
        "SELECT source_partition FROM {db}.event_ids WHERE event_id = {e:String}", {"e": original["event_id"]}))
    mine_facts = [f for f in (facts.decode(m.value()).record for m in consume(
        settings, settings.topic_facts_by_target, 1 + 2, timeout=30, settle=1.0))
        if f["event_id"] == original["event_id"] and f["source_partition"] == home]
    assert len(mine_facts) == 1


ESC_VALUES = {
    "esc_erase": "ok\x1b[1A\x1b[2K",          # cursor up, erase line: would hide the finding above
    "osc_title": "t\x1b]0;pwned\x07",          # OSC: set the terminal title
    "newline_forgery": "x\n[9] 2026-01-01 00:00:00.000  forged -> step",
    "c1_csi": "c\x9b2J",                       # 8-bit CSI
    "bidi": "abc\u202edcba",                   # right-to-left override
}


def test_every_printed_field_is_inert(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    """ESC/OSC/CSI/newline/bidi in every agent-supplied string `agentgov trail` prints (identifiers and input
    names refuse control characters at the edge; the rest are stored verbatim and escaped on output)."""
    from pipeline.audit import render_trail, to_json, trail

    settings = settings_factory()
    pipe = in_process(settings)
    pub = publisher_factory(settings)
    printed = ("from_state", "to_state", "agent.model_id", "agent.agent_version", "trigger.ref",
               "decision.approval_ref", "policy.policy_id", "policy.policy_version", "workflow_version")
    runs = []
    for name, value in ESC_VALUES.items():
        rec = pub.complete(draft(run_id=f"run-esc-{name}", **{
            "decision.approved_by": "mgr-1", "inputs_used": [{"name": f"in-{name}", "source": value}]}))
        for path in printed:
            node = rec
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        rec["attributes"] = {value: value}
        pub.send(rec)
        runs.append(rec)
    pub.flush()
    assert wait_until(lambda: {r["event_id"] for r in runs} <= stored_ids(pipe), 60)
    for name, rec in zip(ESC_VALUES, runs, strict=True):
        steps = trail(pipe.sink, rec["run_id"])
        assert steps[0]["from_state"] == rec["from_state"]  # stored verbatim
        text = render_trail(steps)
        assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)
        # No forged line: a step prints 5 lines plus one per finding.
        assert len(text.splitlines()) == 5 + len(steps[0]["findings"]), text
        escaped = "\\u202e" if name == "bidi" else "\\x"
        assert text.count(escaped) >= len(printed) - 3, text  # agent_version, workflow_version, attrs unprinted
        js = to_json(steps)
        assert not any(c in js for c in "\x1b\x07\x9b\u202e\n")


def test_dlq_command_lists_shows_and_republishes_after_a_fix(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    """An event dead-lettered for a cause that is then fixed (here: it was ahead of a zero clock skew, and
    its time has come) is listed, shown and re-published by `agentgov dlq`, and then stored."""
    from click.testing import CliRunner

    from pipeline.cli import main

    settings = settings_factory(max_future_skew_seconds=0)
    pipe = in_process(settings)
    pub = publisher_factory(settings)
    early = _raw(pub, occurred_at=int(time.time() * 1000) + 4000, from_state="ahead\x1b[2J")
    cut = sized(pub, Limits.from_settings(settings).event_bytes + 10)
    raw = raw_producer(settings)
    for rec in (early, cut):
        raw.produce(settings.topic_transitions, SERDE.encode(rec), key=rec["run_id"].encode())
    assert raw.flush(30) == 0
    dlq_by_source(settings, 2)
    env = {"AGENTGOV_KAFKA_BOOTSTRAP": settings.bootstrap(), "AGENTGOV_TOPIC_DLQ": settings.topic_dlq,
           "AGENTGOV_TOPIC_TRANSITIONS": settings.topic_transitions}
    runner = CliRunner()
    listed = runner.invoke(main, ["dlq", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and any("invalid_value   field occurred_at" in x for x in lines), lines
    assert any("oversized" in x and "(payload cut)" in x for x in lines), lines
    ref_early = next(x.split()[0] for x in lines if "occurred_at" in x)
    ref_cut = next(x.split()[0] for x in lines if "oversized" in x)
    shown = runner.invoke(main, ["dlq", "show", ref_early], env=env)
    assert shown.exit_code == 0 and early["event_id"] in shown.stdout and "\x1b" not in shown.stdout
    refused = runner.invoke(main, ["dlq", "republish", ref_cut], env=env)
    assert refused.exit_code == 1 and "cut payload" in refused.output and "Traceback" not in refused.output

    time.sleep(max(0.0, early["occurred_at"] / 1000 - time.time()) + 0.5)  # the fix: its time has come
    done = runner.invoke(main, ["dlq", "republish", ref_early], env=env)
    assert done.exit_code == 0 and "re-published 1" in done.stdout, done.output
    assert wait_until(lambda: early["event_id"] in stored_ids(pipe), 60)
    flowing(pipe, pub, 2)


def test_cross_agent_signature_and_a_non_utf8_policy_file(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess], tmp_path: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """Agent B's event signed with A's (valid, known) key is AG-EVD-007; A's own is clean. Then the policy
    file is overwritten with non-UTF-8 bytes: the scorers keep the old policy and keep scoring."""
    from pathlib import Path

    policy = Path(tmp_path) / "policy.yaml"
    policy.write_text(Path("policies/default.yaml").read_text())
    settings = settings_factory(signing_keys={"k-a": "key-of-a", "k-b": "key-of-b"}, require_signatures=True,
                                signing_key_agents={"k-a": ["agent-a"], "k-b": ["agent-b*"]},
                                policy_file=policy, policy_reload_seconds=0.2)
    pipe = in_process(settings)
    as_a = publisher_factory(settings, signing_key=("k-a", b"key-of-a"))
    own = as_a.publish(draft(run_id="run-sig-own", **{"agent.agent_id": "agent-a"}))
    forged = as_a.publish(draft(run_id="run-sig-forged", **{"agent.agent_id": "agent-b-7"}))
    as_a.flush()
    assert wait_until(lambda: {own, forged} <= stored_ids(pipe), 60)
    codes = {r["event_id"]: set(r["finding_codes"]) for r in pipe.sink.query(
        "SELECT event_id, finding_codes FROM {db}.assessments FINAL")}
    assert "AG-EVD-007" in codes[forged] and "AG-EVD-006" not in codes[forged]
    assert not {"AG-EVD-006", "AG-EVD-007"} & codes[own]

    version = pipe.scorer.policy.version
    policy.write_bytes(policy.read_bytes().replace(b"version:", b"version: \xff\xfe #", 1))
    time.sleep(1.0)  # several reload checks
    after = {as_a.publish(draft(run_id=f"run-sig-after-{i}", **{"agent.agent_id": "agent-a"})) for i in range(3)}
    as_a.flush()
    assert wait_until(lambda: after <= stored_ids(pipe), 60)
    assert pipe.scorer.policy.version == version
    rejected = [r for r in caplog.records if r.getMessage().startswith("policy file changed but is invalid")]
    assert rejected and "not UTF-8" in getattr(rejected[0], "kv", {})["error"]
    assert all(t.is_alive() for t in pipe.threads)


def test_cli_publish_rejects_huge_integers_and_oversized_events_without_a_traceback(
    settings_factory: Callable[..., Settings], tmp_path: Any,
) -> None:
    import json
    import os
    from pathlib import Path

    from click.testing import CliRunner

    from pipeline.cli import main

    settings = settings_factory()
    tmp_path = Path(tmp_path)

    lines = [json.dumps(draft(step=2**64)), json.dumps(draft(step=2**31)),
             json.dumps(draft(attributes={f"k{i}": "x" * 8192 for i in range(120)})),
             json.dumps(draft(attributes={"k": "x" * 9000}))]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = {k: "" for k in os.environ if k.startswith("AGENTGOV_")}
    env.update({"AGENTGOV_KAFKA_BOOTSTRAP": settings.bootstrap(), "AGENTGOV_STATE_DIR": str(tmp_path),
                "AGENTGOV_TOPIC_TRANSITIONS": settings.topic_transitions})
    result = CliRunner().invoke(main, ["publish", str(path)], env={k: v for k, v in env.items() if v})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert "accepted 0, rejected 4" in result.stdout
    err = result.stderr
    assert f"{path}:1: invalid event: step" in err and f"{path}:2: invalid event: step" in err
    assert f"{path}:3: invalid event: event of" in err and "exceeds the 934464-byte limit" in err
    assert f"{path}:4: invalid event: attributes" in err


def test_a_run_first_seen_at_a_later_step_and_its_look_alike_after_a_restart(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    in_process: Callable[[Settings], InProcess],
) -> None:
    """A run whose first event is step k > 0 (steps before it never sent, a well-formed prev_event_hash)
    raises AG-EVD-003, on a fresh scorer and right after a restart. The look-alike: a run continued after
    the restart, whose earlier steps lie before the committed offset, is found by the replay: no finding."""
    from pipeline.audit import trail

    settings = settings_factory()
    pub = publisher_factory(settings)

    def gap_run(run_id: str, first_sent: int) -> str:
        records = [pub.complete(draft(run_id=run_id, step=i)) for i in range(first_sent + 1)]
        return pub.send(records[-1])  # the steps before it are hashed into the chain, never sent

    def evd3(run_id: str) -> dict[int, list[str]]:
        return {s["step"]: [f["message"] for f in s["findings"] if f["code"] == "AG-EVD-003"]
                for s in trail(pipe.sink, run_id)}

    pipe = in_process(settings)
    ids = {pub.publish(draft(run_id="run-cont", step=0)), pub.publish(draft(run_id="run-cont", step=1)),
           gap_run("run-gap-1", 3)}
    pub.flush()
    assert wait_until(lambda: ids <= stored_ids(pipe), 60)
    assert wait_until(lambda: bool(evd3("run-gap-1").get(3)), 30)
    assert "first seen at step 3: steps 0-2 never arrived" in evd3("run-gap-1")[3][0]
    assert evd3("run-cont") == {0: [], 1: []}
    pipe.close()

    pipe = in_process(settings)  # a restart (or a reassignment): the context is rebuilt by replay
    ids = {pub.publish(draft(run_id="run-cont", step=2)), gap_run("run-gap-2", 2)}
    pub.flush()
    assert wait_until(lambda: ids <= stored_ids(pipe), 60)
    assert wait_until(lambda: bool(evd3("run-gap-2").get(2)), 30)
    assert evd3("run-cont") == {0: [], 1: [], 2: []}



def test_a_record_the_writer_tasks_cannot_store_is_dead_lettered_and_the_writer_keeps_going(
    bus: Bus, settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    """Audit P3: a schema-valid cross-run finding (``occurred_at``), review decision (``decided_at``) or risk
    exception (``expires_at``) stamped 2**62 ms, past year 9999, raised ValueError while its row was built,
    outside the per-record handling; it escaped the writer's loop, which restarted, read the same uncommitted
    record again, for ever: ordinary events stopped being stored. Each is dead-lettered with its reason and
    field; the good records after it on its topic, and ordinary events, are stored; the writer never restarts."""
    settings = settings_factory()
    pub = publisher_factory(settings)
    pipe = pipeline_factory(settings, correlators=1)
    now, far = int(time.time() * 1000), 2**62
    before = flowing(pipe, pub, 2)

    def finding(occurred_at: int) -> dict[str, Any]:
        return {"finding_id": uuid.uuid4().hex, "code": "AG-XRN-001", "severity": "high", "category": "x",
                "pattern": "p", "message": "m", "entity_key": "e", "event_id": str(uuid.uuid4()), "run_id": "r",
                "agent_id": "a", "occurred_at": occurred_at, "related_event_ids": [], "related_run_ids": [],
                "related_partitions": [], "refs": [], "detected_at": now, "correlator_version": "1",
                "governance_policy_version": "1"}

    def decision(decided_at: int) -> dict[str, Any]:
        return {"decision_id": str(uuid.uuid4()), "kind": "triage", "subject_kind": "finding", "subject_id": "x",
                "subject_version": 1, "actor": "a", "actor_roles": [], "decided_at": decided_at, "from_state": None,
                "to_state": None, "classification": None, "reason": None, "comment": None, "payload": {}}

    def exception(expires_at: int) -> dict[str, Any]:
        return {"exception_id": str(uuid.uuid4()), "version": 1, "state": "active", "code": "AG-AUTH-001",
                "agent_id": "a", "workflow_id": None, "target_id": None, "entitlement": None, "justification": "j",
                "requester": "r", "approver": "x", "requested_at": now, "effective_at": now, "expires_at": expires_at,
                "ended_at": None, "updated_by": "u", "updated_at": now}

    cases = [(settings.topic_correlations, "cross_run_finding", finding, "occurred_at", "cross_run_findings",
              "finding_id"),
             (settings.topic_decisions, "review_decision", decision, "decided_at", "decisions", "decision_id"),
             (settings.topic_exceptions, "risk_exception", exception, "expires_at", "exceptions", "exception_id")]
    raw = raw_producer(settings)
    good: dict[str, tuple[str, str]] = {}
    for topic, record, make, _, table, id_field in cases:
        serde = Serde(SCHEMAS, record=record)
        raw.produce(topic, serde.encode(make(far)), key=b"poison", partition=0)
        ok = make(now)
        raw.produce(topic, serde.encode(ok), key=b"good", partition=0)
        good[table] = (id_field, ok[id_field])
    assert raw.flush(30) == 0
    after = flowing(pipe, pub)  # ordinary events still stored after the poison was read

    def stored(table: str) -> bool:
        id_field, value = good[table]
        return bool(pipe.sink.query(f"SELECT 1 FROM {{db}}.{table} WHERE {id_field} = {{v:String}}", {"v": value}))

    assert wait_until(lambda: all(stored(t) for t in good), 60), {t: stored(t) for t in good}
    dead = consume(settings, settings.topic_dlq, 3, timeout=60, settle=1.0)
    got = sorted((header(m.headers(), "agentgov.source.topic"), header(m.headers(), "agentgov.error.reason"),
                  header(m.headers(), "agentgov.error.field")) for m in dead)
    assert got == sorted((topic, "invalid_value", field) for topic, _, _, field, _, _ in cases)
    assert (before | after) <= stored_ids(pipe)
    for table in ("cross_run_findings", "decisions", "exceptions"):
        assert pipe.sink.count(table) == 1, table
    sample = pipe.metrics.registry.get_sample_value
    assert not sample("agentgov_process_restarts_total", {"role": "writer", "reason": "exited"})
    assert sample("agentgov_dead_letters_total", {"reason": "invalid_value"}) == 3


def test_dlq_republish_sends_only_to_the_topics_dead_letters_are_replayed_to(
    bus: Bus, settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
) -> None:
    """Audit P6: a dead letter's ``agentgov.source.topic`` is its sender's word (on Tansu anyone may write the
    dead-letter topic), and a forged one naming the baselines topic was re-published there. Now only the
    transitions and assessments topics are re-published to; each other letter is refused with a message
    naming it, counted in the summary (exit 1, no traceback), and the others still go."""
    from click.testing import CliRunner

    from pipeline.cli import main

    settings = settings_factory()
    pub = publisher_factory(settings)
    rec = _raw(pub)
    raw = raw_producer(settings)

    def letter(topic: str, value: bytes) -> None:
        raw.produce(settings.topic_dlq, value, key=b"k", headers=[
            ("agentgov.error.class", b"ValidationError"), ("agentgov.error.reason", b"invalid_value"),
            ("agentgov.error.message", b"forged"), ("agentgov.source.topic", topic.encode()),
            ("agentgov.source.partition", b"0"), ("agentgov.source.offset", b"1")])

    forged = b'{"agent_id":"agent-x","events":1,"actions":[],"systems":[],"entitlements":[],"inputs":[],' \
             b'"max_tier":0,"grants_per_hour":0,"stale_policy_share":0,"as_of_ms":0}'
    letter(settings.topic_baselines, forged)
    letter(settings.topic_decisions, b"zz")
    letter(settings.topic_transitions, SERDE.encode(rec))
    assert raw.flush(30) == 0
    env = {"AGENTGOV_KAFKA_BOOTSTRAP": settings.bootstrap(), "AGENTGOV_TOPIC_DLQ": settings.topic_dlq,
           "AGENTGOV_TOPIC_TRANSITIONS": settings.topic_transitions,
           "AGENTGOV_TOPIC_ASSESSMENTS": settings.topic_assessments,
           "AGENTGOV_TOPIC_BASELINES": settings.topic_baselines}
    runner = CliRunner()
    assert wait_until(lambda: len(runner.invoke(main, ["dlq", "list"], env=env).stdout.splitlines()) == 3, 30)
    dry = runner.invoke(main, ["dlq", "republish", "--reason", "invalid_value", "--dry-run"], env=env)
    assert dry.exit_code == 1 and "1 would be re-published, 2 refused" in dry.stdout, dry.output
    done = runner.invoke(main, ["dlq", "republish", "--reason", "invalid_value"], env=env)
    assert done.exit_code == 1 and "Traceback" not in done.output, done.output
    assert "re-published 1 dead letters, 2 refused" in done.stdout, done.output
    assert done.stderr.count("refusing dead letter") == 2
    assert settings.topic_baselines in done.stderr and "not one dead letters are re-published to" in done.stderr
    back = consume(settings, settings.topic_transitions, 1, timeout=30)
    assert [m.value() for m in back] == [SERDE.encode(rec)]
    assert consume(settings, settings.topic_baselines, 1, timeout=5) == []
