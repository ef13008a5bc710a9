"""Serde round-trips in both wire formats, and every schema version reading every other's data."""

from __future__ import annotations

import io
import struct
import uuid
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import schemaless_reader, schemaless_writer

from pipeline.broker import free_port
from pipeline.errors import DeadLetter, DecodeError, RegistryUnavailable
from pipeline.events import event_hash
from pipeline.schemas import ASSESSMENT, TRANSITION, SchemaSet
from pipeline.serde import CONFLUENT_MAGIC, SOE_MAGIC, Serde, encode_datum, frame_soe, make_registry, split_header
from pipeline.settings import Settings
from tests.unit.scoring_factory import record

SCHEMAS = SchemaSet.load()
V2_ONLY = {"tenant"}


def registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4().hex}"})


def test_single_object_encoding_round_trip() -> None:
    serde = Serde(SCHEMAS)
    rec = record()
    data = serde.encode(rec)
    assert data[:2] == SOE_MAGIC and data[2:10] == SCHEMAS.transition.fingerprint
    decoded = serde.decode(data)
    assert decoded.record == rec
    assert decoded.current and decoded.writer_version == max(SCHEMAS.versions[TRANSITION])
    assert decoded.datum == data[10:]


def test_confluent_wire_format_round_trip() -> None:
    reg = registry()
    serde = Serde(SCHEMAS, reg, subject="agentgov.transitions.v1-value")
    rec = record(tenant="bu-emea")
    data = serde.encode(rec)
    assert data[:1] == CONFLUENT_MAGIC
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert schema_id == reg.get_latest_version("agentgov.transitions.v1-value").schema_id
    # A consumer with its own client on the same registry resolves the id and reads it.
    assert Serde(SCHEMAS, reg).decode(data).record == rec


def test_the_header_split_the_serde_and_the_writer_share() -> None:
    reg = registry()
    soe = Serde(SCHEMAS).encode(record())
    assert split_header(soe) == (soe[:10], None)
    serde = Serde(SCHEMAS, reg)
    confluent = serde.encode(record())
    header, schema_id = split_header(confluent)
    assert header == confluent[:5] and schema_id == reg.get_latest_version(serde.subject).schema_id
    for cut, reason in ((soe[:9], "truncated"), (confluent[:4], "truncated"), (b"{json", "bad_magic"),
                        (b"", "bad_magic")):
        with pytest.raises(DecodeError) as err:
            split_header(cut)
        assert err.value.reason == reason


def test_a_transition_is_not_an_assessment() -> None:
    with pytest.raises(DecodeError) as caught:
        Serde(SCHEMAS, record=ASSESSMENT).decode(Serde(SCHEMAS).encode(record()))
    assert caught.value.reason == "unknown_schema"


def test_a_registry_id_naming_another_record_is_not_trusted() -> None:
    # Registry-framed: an id whose schema is the transition, offered as an assessment (mock:// is fine
    # here; tests/integration/test_registry.py does it through Apicurio and the writer).
    reg = registry()
    data = Serde(SCHEMAS, reg, subject="agentgov.transitions.v1-value").encode(record())
    with pytest.raises(DecodeError, match=r"names agentgov\.events\.AgentTransition, not ") as caught:
        Serde(SCHEMAS, reg, record=ASSESSMENT).decode(data)
    assert caught.value.reason == "unknown_schema"
    with pytest.raises(DecodeError, match="not found") as missing:  # an id the registry does not know
        Serde(SCHEMAS, reg).decode(CONFLUENT_MAGIC + struct.pack(">I", 4242) + data[5:])
    assert missing.value.reason == "unknown_schema"


def test_a_registry_that_does_not_answer_is_not_a_dead_letter() -> None:
    dead = make_registry(Settings.load(schema_registry_url=f"http://127.0.0.1:{free_port()}",
                                       schema_registry_timeout_seconds=1.0))
    data = CONFLUENT_MAGIC + struct.pack(">I", 7) + b"\x00"
    with pytest.raises(RegistryUnavailable) as caught:
        Serde(SCHEMAS, dead).decode(data)
    assert not isinstance(caught.value, DeadLetter)
    with pytest.raises(RegistryUnavailable):  # registering: the SDK's patience is register_wait (0 here)
        Serde(SCHEMAS, dead, subject="s-value").encode(record())


def _write(version: int, rec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, SCHEMAS.versions[TRANSITION][version].parsed, rec)
    return buf.getvalue()


def _read(data: bytes, writer: int, reader: int) -> dict[str, Any]:
    versions = SCHEMAS.versions[TRANSITION]
    return schemaless_reader(io.BytesIO(data), versions[writer].parsed, versions[reader].parsed)  # type: ignore


@pytest.mark.parametrize("writer", sorted(SCHEMAS.versions[TRANSITION]))
@pytest.mark.parametrize("reader", sorted(SCHEMAS.versions[TRANSITION]))
def test_every_version_reads_every_other_versions_data(writer: int, reader: int) -> None:
    rec = record(tenant="bu-emea")
    rec["evidence"].update(signature="ab" * 32, key_id="k1")
    got = _read(_write(writer, rec), writer, reader)
    reader_fields = {f["name"] for f in SCHEMAS.versions[TRANSITION][reader].raw["fields"]}
    writer_fields = {f["name"] for f in SCHEMAS.versions[TRANSITION][writer].raw["fields"]}
    for name in reader_fields & writer_fields - {"evidence"}:
        assert got[name] == rec[name], name
    for name in reader_fields - writer_fields:  # added later: the default
        assert got[name] is None, name
    assert set(got) == reader_fields  # fields the reader does not know are skipped
    # The canonical hash is the same whichever version carried the event, as long as it uses no field
    # the reader lacks (nulls are dropped; signature and key_id are outside the hash).
    plain = record()
    assert event_hash(_read(_write(writer, plain), writer, reader)) == event_hash(plain)


def test_old_data_through_serde_is_upgraded_to_current() -> None:
    v1 = SCHEMAS.versions[TRANSITION][1]
    rec = record()
    old = {k: v for k, v in rec.items() if k not in V2_ONLY}
    old["evidence"] = {k: v for k, v in rec["evidence"].items() if k in ("event_hash", "prev_event_hash")}
    decoded = Serde(SCHEMAS).decode(frame_soe(v1.fingerprint, encode_datum(v1.parsed, old)))
    assert decoded.writer_version == 1 and not decoded.current and decoded.datum == b""
    assert decoded.record["tenant"] is None and decoded.record["evidence"]["signature"] is None
    assert event_hash(decoded.record) == event_hash(rec) == rec["evidence"]["event_hash"]


def test_v1_writer_schema_from_a_registry_is_read() -> None:
    reg = registry()
    v1 = SCHEMAS.versions[TRANSITION][1]
    schema_id = reg.register_schema("old-agent-value", Schema(v1.json(), "AVRO"))
    rec = record()
    old = {k: v for k, v in rec.items() if k not in V2_ONLY}
    old["evidence"] = {"event_hash": rec["evidence"]["event_hash"], "prev_event_hash": None}
    data = CONFLUENT_MAGIC + struct.pack(">I", schema_id) + encode_datum(v1.parsed, old)
    decoded = Serde(SCHEMAS, reg).decode(data)
    assert decoded.writer_version == 1 and decoded.record["event_id"] == rec["event_id"]
