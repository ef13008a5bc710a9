"""The correlator's fact reader (pipeline/fact_reader.py) against the Serde it stands in for."""

from __future__ import annotations

import io
import random

import pytest

from pipeline.errors import DecodeError
from pipeline.fact_reader import FIELDS, FactReader, read_fact, schema_kinds, varint
from pipeline.facts import FACT, as_event, fact_from_event
from pipeline.schemas import SchemaSet
from pipeline.serde import CONFLUENT_MAGIC, SOE_MAGIC, Serde
from tests.unit.scoring_factory import event

SCHEMAS = SchemaSet.load()


def serde() -> Serde:
    return Serde(SCHEMAS, None, record=FACT, subject="agentgov.facts.by-target.v1-value")


def facts(n: int, seed: int, huge: bool = False) -> list[dict[str, object]]:
    """Facts with every optional field both set and null, long and non-ASCII strings, and values whose
    varints take one to nine bytes (``huge``: ten, which the fast path leaves to fastavro)."""
    rnd = random.Random(seed)
    words = ["", "a", "é", "用户", "x" * 63, "y" * 64, "z" * 200, "🔐" * 40, "u-1234", "Straße", "ÉCOLE-İ"]
    longs = [0, 1, 63, 64, 8191, 8192, 2**40, 2**62 - 1, *([2**63 - 1] if huge else [])]
    out = []
    for i in range(n):
        f = fact_from_event(event(), rnd.randrange(12), rnd.choice(longs))
        for name, kind in FIELDS:
            if kind == "string" and name not in ("action", "outcome", "authority", "target_type"):
                f[name] = rnd.choice(words) + str(i)
            elif kind == "optional":
                f[name] = rnd.choice([None, rnd.choice(words)])
        f["occurred_at"] = rnd.choice([0, 1, -1, 1_790_000_000_000, -(2**62), *([-(2**63)] if huge else [])])
        f["privilege_tier"] = rnd.choice([0, 3, -64, 2**31 - 1, -(2**31)])
        f["step"] = rnd.choice([0, 63, 64, 5000])
        f["scorer_codes"] = rnd.choice([[], ["AG-ESC-002"], ["AG-AUTH-001", "AG-SOD-001", "é" * 70],
                                        [f"AG-X-{k:03d}" for k in range(64)]])
        out.append(f)
    return out


def test_the_fast_path_covers_the_current_fact_schema() -> None:
    """A schema change that the reader does not follow must fail here, not misread in production (the
    reader would fall back to fastavro, at twice the cost)."""
    s = serde()
    assert schema_kinds(s.current.raw) == FIELDS
    assert FactReader(s).fast


@pytest.mark.parametrize("seed", range(3))
def test_reads_exactly_what_serde_and_as_event_read(seed: int) -> None:
    s, reader = serde(), FactReader(serde())
    for f in facts(300, seed):
        data = s.encode(f)
        want = as_event(s.decode(data).record)
        start = s.current_datum_start(data)
        assert start is not None
        assert read_fact(data, start) == want  # the fast path itself, not a fallback
        assert reader.read(data) == want


def test_ten_byte_varints_are_read_by_serde() -> None:
    s, reader = serde(), FactReader(serde())
    for f in facts(200, 4, huge=True):
        data = s.encode(f)
        assert reader.read(data) == as_event(s.decode(data).record)


def test_registry_framed_facts_take_the_fast_path_too() -> None:
    class Registry:
        def register_schema(self, subject: str, schema: object) -> int:
            return 7

        def get_schema(self, schema_id: int) -> object:
            return type("S", (), {"schema_str": serde().current.json()})()

    s = Serde(SCHEMAS, Registry(), record=FACT, subject="agentgov.facts.by-target.v1-value")
    data = s.encode(facts(1, 9)[0])
    assert data[:1] == CONFLUENT_MAGIC
    assert s.current_datum_start(data) == 5
    assert FactReader(s).read(data) == as_event(s.decode(data).record)


@pytest.mark.parametrize("value", [0, 1, -1, 63, -64, 64, 2**31, -(2**40), 2**62 - 1, -(2**62), 2**62, -(2**63)])
def test_varint_reads_up_to_nine_bytes_and_leaves_longer_ones_to_fastavro(value: int) -> None:
    zigzag = ((value << 1) ^ (value >> 63)) & (2**64 - 1)
    raw = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        raw.append(byte | (0x80 if zigzag else 0))
        if not zigzag:
            break
    if len(raw) <= 9:
        assert varint(bytes(raw) + b"\x00", 0) == (value, len(raw))
    else:
        with pytest.raises(ValueError):
            varint(bytes(raw) + b"\x00", 0)


def _mutations(data: bytes, start: int, rnd: random.Random) -> list[bytes]:
    body = data[start:]
    cuts = [data[:start + k] for k in (0, 1, len(body) // 2, len(body) - 1)]
    flips = []
    for _ in range(40):
        b = bytearray(data)
        i = rnd.randrange(start, len(b))
        b[i] = rnd.randrange(256)
        flips.append(bytes(b))
    return [*cuts, data + b"\x00", *flips,
            data[:start] + b"\x01" + body[1:],            # negative length
            data[:start] + b"\xff" * 11 + body,             # varint past 10 bytes
            data[:start] + b"\x04\xc3\x28" + body[3:]]      # invalid UTF-8


@pytest.mark.parametrize("seed", range(3))
def test_bad_datums_get_the_answer_serde_gives(seed: int) -> None:
    """Truncated, flipped, padded: the reader never answers on its own where Serde would refuse, and refuses
    with Serde's reason; where a flip still decodes (a changed letter), it reads what Serde reads."""
    rnd = random.Random(seed)
    s, reader = serde(), FactReader(serde())
    for f in facts(20, seed):
        data = s.encode(f)
        for bad in _mutations(data, s.current_datum_start(data) or 0, rnd):
            try:
                want: object = as_event(s.decode(bad).record)
            except DecodeError as exc:
                want = ("refused", exc.reason)
            try:
                got: object = reader.read(bad)
            except DecodeError as exc:
                got = ("refused", exc.reason)
            assert got == want


def test_scorer_codes_past_the_cap_or_in_a_sized_block_are_left_to_serde() -> None:
    """The fast path reads the one block write_fact writes; a sized block (negative count) goes to fastavro,
    and more codes than SCORER_CODES_MAX are refused by the Serde's guard, not built."""
    s, reader = serde(), FactReader(serde())
    f = facts(1, 5)[0]
    f["scorer_codes"] = ["AG-ESC-002", "AG-SOD-001"]
    data = s.encode(f)
    assert data.endswith(b"\x04\x14AG-ESC-002\x14AG-SOD-001\x00")
    sized = data[:-24] + b"\x03\x2c\x14AG-ESC-002\x14AG-SOD-001\x00"  # count -2, then 22 bytes
    assert reader.read(sized) == as_event(s.decode(sized).record) == reader.read(data)
    f["scorer_codes"] = [f"AG-X-{k:03d}" for k in range(65)]
    from pipeline.facts import write_fact  # the bytes a hostile producer could write: the schema allows them
    over = data[:s.current_datum_start(data) or 0] + write_fact(as_event(f), f["source_partition"],  # type: ignore[arg-type]
                                                                   f["source_offset"], f["scorer_codes"])  # type: ignore[arg-type]
    with pytest.raises(DecodeError, match="scorer_codes"):
        reader.read(over)


def test_an_older_schema_version_is_decoded_by_serde() -> None:
    """Facts written before the current version resolve through fastavro (the reader is for the current
    version only): decoding one gives the Serde's record, with the defaults of the fields it lacks."""
    s = serde()
    versions = sorted(SCHEMAS.versions[FACT])
    assert len(versions) >= 2, "facts have had more than one schema version"
    old = SCHEMAS.versions[FACT][versions[0]]
    datum = {f["name"]: f.get("default") for f in old.raw["fields"]}
    datum.update({k: v for k, v in facts(1, 3)[0].items() if k in datum})
    from fastavro import schemaless_writer

    buf = io.BytesIO()
    schemaless_writer(buf, old.parsed, datum)
    data = SOE_MAGIC + old.fingerprint + buf.getvalue()
    assert s.current_datum_start(data) is None
    assert FactReader(s).read(data) == as_event(s.decode(data).record)


def test_empty_oversized_and_unframed_messages_are_refused_as_serde_refuses() -> None:
    reader = FactReader(serde())
    for data, reason in ((b"", "bad_magic"), (b"\x07abc", "bad_magic"), (b"\x00\x00", "truncated"),
                         (SOE_MAGIC + b"\x00" * 8 + b"x" * 2_000_000, "oversized")):
        with pytest.raises(DecodeError) as info:
            reader.read(data)
        assert info.value.reason == reason


def test_the_agent_its_principal_and_the_target_are_read_as_identity_keys() -> None:
    s, reader = serde(), FactReader(serde())
    f = fact_from_event(event(**{"agent.agent_id": "Agent-7", "agent.on_behalf_of": "Human-ALICE",
                                 "target.identity_id": "Bob@Corp"}), 0, 1)
    ev = reader.read(s.encode(f))
    assert (ev["agent"]["agent_id"], ev["agent"]["on_behalf_of"], ev["target"]["identity_id"]) == (
        "agent-7", "human-alice", "bob@corp")
    assert ev == as_event(f)


def _workload_facts(events: int) -> list[bytes]:
    """The facts the scorer writes (FactEmitter) for workload events, planted and cross-run chains included."""
    from pipeline.facts import FactEmitter, is_access_change
    from pipeline.publisher import TransitionPublisher
    from pipeline.settings import Settings
    from pipeline.workload import Workload

    pub = TransitionPublisher(Settings.load(kafka_bootstrap="127.0.0.1:1"))  # complete() only: never connects
    emitter, out = FactEmitter(Settings(), serde()), []
    for i, op in enumerate(Workload(seed=3, planted=True, bad_inputs=False, cross_run=True).ops(events)):
        if op.kind != "draft":
            continue
        record = pub.complete(op.payload)
        if is_access_change(record) or record["action"] == "create_group":
            out.append(emitter.encode(record, i % 12, 1_000 * i, ["AG-ESC-002"] if i % 7 == 0 else []))
    return out


def test_workload_and_random_facts_read_as_serde_reads_them_field_for_field() -> None:
    """The fast path against the Serde and as_event, compared as repr: the same fields in the same order, of
    the same types (``1`` is not ``True``), over the scorer's own facts and the random ones above, one reader
    for all of them (its framing short cut taken from the second fact on)."""
    s, reader = serde(), FactReader(serde())
    datums = _workload_facts(3_000) + [s.encode(f) for f in facts(500, 11)]
    assert len(datums) > 2_000
    for data in datums:
        want = repr(as_event(s.decode(data).record))
        start = s.current_datum_start(data)
        assert start is not None
        assert repr(read_fact(data, start)) == want
        assert repr(reader.read(data)) == want
    assert reader._header == datums[0][:start]


def test_after_a_current_fact_other_framings_still_get_the_serdes_answer() -> None:
    """The framing short cut (a datum starting with the current schema's header) leaves everything else to
    the Serde: another schema version, a message over the size limit, an empty one, bad magic."""
    s, reader = serde(), FactReader(serde())
    good = s.encode(facts(1, 12)[0])
    assert reader.read(good) == as_event(s.decode(good).record)
    old = SCHEMAS.versions[FACT][sorted(SCHEMAS.versions[FACT])[0]]
    datum = {f["name"]: f.get("default") for f in old.raw["fields"]}
    datum.update({k: v for k, v in facts(1, 3)[0].items() if k in datum})
    from fastavro import schemaless_writer

    buf = io.BytesIO()
    schemaless_writer(buf, old.parsed, datum)
    older = SOE_MAGIC + old.fingerprint + buf.getvalue()
    assert reader.read(older) == as_event(s.decode(older).record)
    header = good[:s.current_datum_start(good) or 0]
    for data, reason in ((b"", "bad_magic"), (b"\xff" + good, "bad_magic"), (header, "truncated"),
                         (header + b"x" * 2_000_000, "oversized")):
        with pytest.raises(DecodeError) as info:
            reader.read(data)
        assert info.value.reason == reason
    assert reader.read(good) == as_event(s.decode(good).record)
