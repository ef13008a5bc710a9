"""The decode guard (pipeline/avro_guard.py): what fastavro accepts and the Serde must refuse, before fastavro
builds anything. Crafted datums: a map repeating a key, collections over their limit, overlong varints."""

from __future__ import annotations

import io
import random
import tracemalloc
from typing import Any
from unittest import mock

import pytest
from fastavro import schemaless_writer

from pipeline import serde as serde_module
from pipeline.avro_guard import compile_guard
from pipeline.errors import DecodeError
from pipeline.limits import ATTRIBUTES_MAX, COLLECTION_MAX, INPUTS_MAX
from pipeline.schemas import TRANSITION, SchemaSet
from pipeline.serde import SOE_HEADER, SOE_MAGIC, Serde
from tests.unit.scoring_factory import record

SCHEMAS = SchemaSet.load()
SERDE = Serde(SCHEMAS)


def zz(n: int) -> bytes:
    """Avro's zigzag varint, canonical (shortest) form."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def padded(n: int, size: int) -> bytes:
    """The zigzag varint of ``n`` spread over ``size`` bytes (continuation bits on zero groups)."""
    u = (n << 1) ^ (n >> 63)
    out = bytearray()
    for _ in range(size - 1):
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def s(text: str) -> bytes:
    raw = text.encode()
    return zz(len(raw)) + raw


def with_attributes(blocks: bytes) -> bytes:
    """A valid event whose ``attributes`` map is the wire bytes ``blocks`` (block counts, entries, the 0)."""
    data = SERDE.encode(record(attributes={"PLACEHOLDER-K": "PLACEHOLDER-V"}))
    pattern = zz(1) + s("PLACEHOLDER-K") + s("PLACEHOLDER-V") + zz(0)
    assert data.count(pattern) == 1
    return data.replace(pattern, blocks)


def with_inputs(blocks: bytes) -> bytes:
    data = SERDE.encode(record(inputs_used=[{"name": "PLACEHOLDER-N", "source": "PLACEHOLDER-S"}]))
    pattern = zz(1) + s("PLACEHOLDER-N") + s("PLACEHOLDER-S") + zz(0)
    assert data.count(pattern) == 1
    return data.replace(pattern, blocks)


def refused(data: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as caught:
        SERDE.decode(data)
    return caught.value


# -- a map repeating a key ---------------------------------------------------------------------
@pytest.mark.parametrize("blocks", [
    zz(2) + s("aa") + s("approved-by-ciso") + s("aa") + s("denied-by-ciso") + zz(0),       # one block
    zz(1) + s("aa") + s("approved") + zz(1) + s("aa") + s("denied") + zz(0),               # two blocks
    zz(2) + s("aa") + s("x") + s("bb") + s("y") + zz(-1) + zz(4) + s("aa") + s("z") + zz(0),  # sized block
])
def test_a_map_repeating_a_key_is_refused(blocks: bytes) -> None:
    """fastavro keeps the last value, ClickHouse's Map keeps both (and attributes['aa'] answers the first):
    the store would hold evidence other than what was scored. Refused as invalid_value naming the map."""
    exc = refused(with_attributes(blocks))
    assert exc.reason == "invalid_value" and exc.fields["field"] == "attributes"
    assert "duplicate key" in exc.message and "'aa'" in exc.message


def test_distinct_keys_in_several_blocks_still_read() -> None:
    blocks = zz(1) + s("aa") + s("x") + zz(-2) + zz(6) + s("ab") + s("y") + s("b") + s("z") + zz(0)
    assert SERDE.decode(with_attributes(blocks)).record["attributes"] == {"aa": "x", "ab": "y", "b": "z"}


# -- collections over their limit: refused at the block count, nothing built ---------------------
def test_460k_inputs_are_refused_before_fastavro_builds_one() -> None:
    """review #3: 920 KB of empty inputs_used entries cost 290 ms and 89 MB before check_record counted them."""
    rec = record()
    rec["inputs_used"] = [{"name": "", "source": ""}] * 460_000
    data = SERDE.encode(rec)
    assert len(data) < 934_464  # under the event limit
    SERDE.decode(SERDE.encode(record()))  # the guard is made at the first decode: not measured here
    with mock.patch.object(serde_module, "schemaless_reader", wraps=serde_module.schemaless_reader) as reader:
        tracemalloc.start()
        try:
            exc = refused(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert exc.reason == "invalid_value" and exc.fields["field"] == "inputs_used"
    assert not reader.called
    assert peak < 200_000, peak


@pytest.mark.parametrize(("count", "accepted"), [(INPUTS_MAX, True), (INPUTS_MAX + 1, False)])
def test_the_inputs_limit_counts_every_block(count: int, accepted: bool) -> None:
    entry = s("n") + s("hr")
    blocks = zz(200) + entry * 200 + zz(-(count - 200)) + zz(len(entry) * (count - 200)) + entry * (count - 200)
    data = with_inputs(blocks + zz(0))
    if accepted:
        assert len(SERDE.decode(data).record["inputs_used"]) == count
    else:
        exc = refused(data)
        assert exc.reason == "invalid_value" and exc.fields["field"] == "inputs_used"


def test_a_block_count_over_the_limit_is_refused_without_its_entries() -> None:
    """A block announcing 2**40 entries is refused by its count: not read until the bytes run out."""
    for data, field in ((with_inputs(zz(2**40) + zz(0)), "inputs_used"),
                        (with_attributes(zz(2**40) + zz(0)), "attributes"),
                        (with_attributes(zz(ATTRIBUTES_MAX + 1) + zz(0)), "attributes")):
        exc = refused(data)
        assert exc.reason == "invalid_value" and exc.fields["field"] == field


# -- varints: at most 10 bytes, within 64 bits ------------------------------------------------------
def test_an_overlong_varint_is_refused_as_the_store_refuses_it() -> None:
    """review #4: an 11-byte `step` decoded in fastavro, ClickHouse refused it ('Invalid Avro varint')."""
    data = SERDE.encode(record(step=1234567))
    canonical = zz(1234567)
    assert data.count(canonical) == 1
    for bad in (padded(1234567, 11), padded(1234567, 10)[:-1] + b"\x02", padded(1234567, 10)[:-1] + b"\x7f"):
        exc = refused(data.replace(canonical, bad))
        assert exc.reason == "malformed" and "varint" in exc.message
    # Padded within 10 bytes and 64 bits: read alike by fastavro and the store, so accepted.
    assert SERDE.decode(data.replace(canonical, padded(1234567, 10))).record["step"] == 1234567


def test_an_overlong_length_or_union_index_is_refused() -> None:
    data = SERDE.encode(record(from_state="STATE-X", tenant="acme"))
    bad_length = data.replace(s("STATE-X"), padded(7, 11) + b"STATE-X")
    assert refused(bad_length).reason == "malformed"
    tail = zz(1) + s("acme")  # the last field: union branch 1, then the string
    assert data.endswith(tail)
    assert refused(data[:-len(tail)] + padded(1, 11) + s("acme")).reason == "malformed"


@pytest.mark.parametrize("index", [-1, -2, -10, 99])
def test_an_enum_or_union_index_the_schema_does_not_have_is_refused(index: int) -> None:
    """fastavro indexes the symbols (branches) with it, so -1 read as the last action and a union's -1 as its
    string branch: the scorer acted on an event the store refuses. Refused as malformed, naming the field."""
    rec = record(action="grant_entitlement", tenant="acme")
    data = SERDE.encode(rec)
    other = SERDE.encode(dict(rec, action="revoke_entitlement"))
    at = next(i for i in range(len(data)) if data[i] != other[i])  # the action's index (one byte: < 64)
    exc = refused(data[:at] + zz(index) + data[at + 1:])
    assert exc.reason == "malformed" and exc.fields["field"] == "action", exc.message
    tail = zz(1) + s("acme")  # the last field, tenant: ["null", "string"], branch 1
    assert data.endswith(tail)
    exc = refused(data[:-len(tail)] + zz(index) + s("acme"))
    assert exc.reason == "malformed" and exc.fields["field"] == "tenant", exc.message


def test_64_bit_extremes_still_decode() -> None:
    for value in (2**63 - 1, -(2**63), 2**62, -(2**62)):
        rec = record()
        rec["occurred_at"] = value
        data = SERDE.encode(rec)
        assert SERDE.decode(data).record["occurred_at"] == value


# -- the walk reads what fastavro reads ---------------------------------------------------------
def test_every_schema_of_every_record_has_a_guard() -> None:
    for record_name, versions in SCHEMAS.versions.items():
        for version, sv in versions.items():
            assert compile_guard(sv.raw, COLLECTION_MAX) is not None, (record_name, version)


def _random_record(rnd: random.Random) -> dict[str, Any]:
    def text() -> str:
        return "".join(rnd.choice("aé€\U0001f600x-_") for _ in range(rnd.choice((0, 1, 5, 63, 64, 200))))
    rec = record()
    rec["agent"]["model_id"] = rnd.choice((None, "m-1"))
    rec["trigger"]["ref"] = rnd.choice((None, text()))
    rec["decision"]["approved_by"] = rnd.choice((None, text()))
    rec["tenant"] = rnd.choice((None, text()))
    rec["attributes"] = {f"k{i}-{text()}": text() for i in range(rnd.choice((0, 1, 63, 64, ATTRIBUTES_MAX)))}
    rec["inputs_used"] = [{"name": f"n{i}", "source": text()} for i in range(rnd.choice((0, 1, 64, INPUTS_MAX)))]
    rec["step"] = rnd.choice((0, 63, 64, 2**31 - 1))
    rec["occurred_at"] = rnd.choice((0, -1, 2**63 - 1, -(2**63), 1_777_629_600_000))
    return rec


@pytest.mark.parametrize("version", sorted(SCHEMAS.versions[TRANSITION]))
def test_the_walk_ends_where_the_datum_ends(version: int) -> None:
    """Valid events of every transition version (limits reached, multi-byte lengths, every union branch):
    the guard accepts each and walks to its last byte, as fastavro reads it."""
    sv = SCHEMAS.versions[TRANSITION][version]
    guard = compile_guard(sv.raw, COLLECTION_MAX)
    assert guard is not None
    rnd = random.Random(version)
    fields = {f["name"] for f in sv.raw["fields"]}
    for _ in range(60):
        rec = {k: v for k, v in _random_record(rnd).items() if k in fields}
        buf = io.BytesIO()
        schemaless_writer(buf, sv.parsed, rec)
        datum = buf.getvalue()
        assert guard(SOE_MAGIC + sv.fingerprint + datum, SOE_HEADER) == SOE_HEADER + len(datum)


# -- arrays of entries that take no bytes ------------------------------------------------------
ZERO_SIZE_ITEMS = ["null", {"type": "fixed", "name": "Nothing", "size": 0},
                   {"type": "record", "name": "Empty", "fields": [{"name": "n", "type": "null"}]}]


@pytest.mark.parametrize("items", ZERO_SIZE_ITEMS, ids=["null", "fixed0", "record-of-null"])
@pytest.mark.parametrize("blocks", [zz(2**62 - 1) + zz(0),             # one block: fastavro looped for ever
                                    zz(50) + zz(2**62 - 1) + zz(0),    # a small block, then the huge one
                                    zz(-(2**62 - 1)) + zz(0) + zz(0)])  # sized block of 0 bytes
def test_an_array_of_zero_byte_entries_beyond_the_datum_is_refused(items: Any, blocks: bytes) -> None:
    """A schema registered with such an array (a registry takes any backward-compatible version) and a count of
    2**62: the walk took every entry for a byte, so a count over the bytes left went to fastavro as a datum cut
    short, and fastavro looped over the entries, none taking a byte (the audit of session 26 killed it after
    12 s of an estimated thousands of years). Refused by the guard, naming the field."""
    schema = {"type": "record", "name": "Padded", "namespace": "t",
              "fields": [{"name": "pad", "type": {"type": "array", "items": items}}, {"name": "id", "type": "string"}]}
    guard = compile_guard(schema, {})
    assert guard is not None
    data = b"\x00" + blocks + s("evt-1")
    with pytest.raises(DecodeError) as caught:
        guard(data, 1)
    assert caught.value.reason == "malformed" and caught.value.fields.get("field") == "pad"


@pytest.mark.parametrize("items", ZERO_SIZE_ITEMS, ids=["null", "fixed0", "record-of-null"])
def test_a_short_array_of_zero_byte_entries_still_reads(items: Any) -> None:
    """Fewer such entries than the datum has bytes, in one block or several, are walked to the datum's end."""
    schema = {"type": "record", "name": "Padded", "namespace": "t",
              "fields": [{"name": "pad", "type": {"type": "array", "items": items}}, {"name": "id", "type": "string"}]}
    guard = compile_guard(schema, {})
    assert guard is not None
    for blocks in (zz(3) + zz(0), zz(2) + zz(1) + zz(0), zz(0)):
        data = b"\x00" + blocks + s("evt-0123456789")
        assert guard(data, 1) == len(data)


def test_a_count_over_the_bytes_left_whose_entry_cannot_be_walked_is_left_to_fastavro() -> None:
    """The zero-byte probe walks one entry of a count larger than the datum: bytes of a datum cut short, read as
    an entry, can hold an index the schema lacks. That entry takes bytes, so fastavro decides (``truncated``),
    as before the probe; the probe refused it ``malformed`` (CI fuzz run, session 26)."""
    schema = {"type": "record", "name": "Cut", "namespace": "t",
              "fields": [{"name": "items", "type": {"type": "array", "items": ["null", "string"]}}]}
    guard = compile_guard(schema, {})
    assert guard is not None
    data = b"\x00" + zz(1000) + zz(7)  # 1,000 entries announced; the first's union index 7 does not exist
    assert guard(data, 1) is None
