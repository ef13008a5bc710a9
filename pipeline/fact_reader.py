"""A decoder for access facts written with the current fact schema, straight into the event-shaped dict.

The correlator decodes every fact it consumes (1.8 per event), and decoding was the largest single part of
its CPU: fastavro's generic reader (9 µs for the 22 fields) and then :func:`~pipeline.facts.as_event`
reshaping the record (2 µs). :class:`FactReader` reads a datum written with the *current* schema by code
made for that schema's fields (straight-line, one short-string fast path per field: about 60% of the time)
and builds the rules' dict as it goes.

It never decides alone. Anything else goes to :class:`~pipeline.serde.Serde`, whose answer is authoritative:
a datum written with another schema version (resolved by fastavro), and any datum this reader cannot read
to its exact end (truncated, a bad union index, a negative length, invalid UTF-8, trailing bytes), which
Serde then decodes or rejects with its usual ``DecodeError`` and reason. The fields it reads are checked
against the current schema when it is built: a schema that no longer matches disables the fast path (and
``tests/unit/test_fact_reader.py`` fails), it does not misread.

Example::

    reader = FactReader(serde)                     # serde: Serde(..., record=FACT)
    ev = reader.read(msg.value())                  # TransitionDict; raises DecodeError like Serde.decode
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .errors import DecodeError
from .events import TransitionDict, identity_key
from .facts import as_event
from .limits import FACT_MAX_BYTES
from .limits import SCORER_CODES_MAX as STRINGS_MAX
from .serde import Serde

log = logging.getLogger(__name__)

STRING, LONG, OPTIONAL, STRINGS = "string", "long", "optional", "strings"
FIELDS: tuple[tuple[str, str], ...] = (
    ("event_id", STRING), ("occurred_at", LONG), ("run_id", STRING), ("step", LONG), ("agent_id", STRING),
    ("on_behalf_of", OPTIONAL), ("target_id", STRING), ("target_type", STRING), ("lifecycle_state", STRING),
    ("action", STRING), ("system", STRING), ("resource_id", STRING), ("entitlement", OPTIONAL),
    ("privilege_tier", LONG), ("outcome", STRING), ("authority", STRING), ("approved_by", OPTIONAL),
    ("policy_id", OPTIONAL), ("policy_version", OPTIONAL), ("event_hash", STRING), ("source_partition", LONG),
    ("source_offset", LONG), ("scorer_codes", STRINGS),
)
"""The current fact schema's fields in writer order, by wire kind (Avro int and long share the zigzag varint)."""

SHAPE = """{
    "event_id": event_id, "occurred_at": occurred_at, "run_id": run_id, "step": step, "action": action,
    "agent": {"agent_id": agent_id.lower() if agent_id.isascii() else key(agent_id),
              "on_behalf_of": on_behalf_of and (on_behalf_of.lower() if on_behalf_of.isascii()
                                                else key(on_behalf_of))},
    "target": {"identity_id": target_id.lower() if target_id.isascii() else key(target_id),
               "identity_type": target_type,
               "lifecycle_state": lifecycle_state},
    "resource": {"system": system, "resource_id": resource_id, "entitlement": entitlement,
                 "privilege_tier": privilege_tier},
    "decision": {"outcome": outcome, "authority": authority, "approved_by": approved_by},
    "policy": {"policy_id": policy_id, "policy_version": policy_version},
    "evidence": {"event_hash": event_hash},
    "source_partition": source_partition, "source_offset": source_offset, "scorer_codes": scorer_codes}"""
"""What :func:`~pipeline.facts.as_event` makes of a fact (``tests/unit/test_fact_reader.py`` holds them equal)."""


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint at ``pos`` of at most 9 bytes (values within +-2**62): its value and the position
    after it. A longer one raises ValueError and is left to the Serde, which refuses one of more than 10 bytes
    or beyond 64 bits (``avro_guard.py``, as the store does) and has fastavro read the others."""
    b = data[pos]
    n, shift, pos = b & 0x7F, 7, pos + 1
    while b & 0x80:
        if shift > 56:
            raise ValueError("varint of 10 bytes or more")
        b = data[pos]
        n |= (b & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
    return (n >> 1) ^ -(n & 1), pos


def _field_source(name: str, kind: str) -> list[str]:
    """Lines reading one field at ``pos`` into the local ``name``: a one-byte varint inline, longer ones
    through :func:`varint`."""
    if kind == LONG:
        return ["    b = data[pos]",
                "    if b < 128:",
                f"        {name} = (b >> 1) ^ -(b & 1); pos += 1",
                "    else:",
                *("        " + line for line in _varint_source(name))]
    if kind == STRINGS:  # array of strings as write_fact writes it: one block (or none), then the empty one
        return [*_field_source("count", LONG),
                f"    {name} = []",
                "    if count:",
                "        if not 0 < count <= STRINGS_MAX:",
                "            raise ValueError('array block')  # sized, or over the cap: the Serde and its guard",
                "        for _ in range(count):",
                *("            " + line for line in _string_source("s")),
                f"            {name}.append(s)",
                "        if data[pos] != 0:",
                "            raise ValueError('array block')",
                "        pos += 1"]
    pad, lines = "    ", []
    if kind == OPTIONAL:  # union ["null", "string"]: branch 0 (zigzag 0) or 1 (zigzag 2)
        lines = ["    u = data[pos]; pos += 1",
                 "    if u == 0:",
                 f"        {name} = None",
                 "    elif u != 2:",
                 "        raise ValueError('union branch')",
                 "    else:"]
        pad = "        "
    return [*lines, *(pad + line for line in _string_source(name))]


def _varint_source(name: str) -> list[str]:
    """:func:`varint` inline (no call), for a varint whose first byte ``b`` at ``pos`` has its high bit set:
    the same bytes read, the same value, ValueError past 9 bytes and IndexError past the end, as it."""
    return ["z = b & 0x7F; shift = 7; pos += 1",
            "while True:",
            "    b = data[pos]; pos += 1",
            "    z |= (b & 0x7F) << shift",
            "    if b < 128:",
            "        break",
            "    shift += 7",
            "    if shift > 56:",
            "        raise ValueError('varint of 10 bytes or more')",
            f"{name} = (z >> 1) ^ -(z & 1)"]


def _string_source(name: str) -> list[str]:
    return ["b = data[pos]",
            "if b < 128 and not b & 1:",
            "    n = b >> 1; pos += 1",
            "elif b < 128:",
            "    raise ValueError('negative length')  # a one-byte varint, odd: negative",
            "else:",
            *("    " + line for line in _varint_source("n")),
            "    if n < 0:",
            "        raise ValueError('negative length')",
            "end = pos + n",
            "if end > size:",
            "    raise EOFError('string past the end')",
            f"{name} = data[pos:end].decode(); pos = end"]


def _compile() -> tuple[Callable[[bytes, int], TransitionDict], str]:
    lines = ["def read_fact(data, pos):", "    size = len(data)"]
    for name, kind in FIELDS:
        lines += _field_source(name, kind)
    lines += ["    if pos != size:", "        raise ValueError('trailing bytes')", "    return " + SHAPE]
    source = "\n".join(lines)
    namespace: dict[str, Any] = {"varint": varint, "STRINGS_MAX": STRINGS_MAX, "key": identity_key}
    exec(compile(source, "<pipeline.fact_reader>", "exec"), namespace)  # our own source, made above (as dataclasses do)
    return namespace["read_fact"], source


read_fact, SOURCE = _compile()
"""``read_fact(data, pos)``: the event-shaped dict of the fact datum at ``data[pos:]``; raises IndexError,
ValueError, EOFError or UnicodeDecodeError on a datum it cannot read to its exact end. ``SOURCE`` is its code."""


def schema_kinds(schema: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """A record schema's fields as :data:`FIELDS` names them; kind ``?`` for a type the reader does not read."""
    def kind(t: Any) -> str:
        if isinstance(t, dict):
            if t.get("type") == "array":
                return STRINGS if t.get("items") == "string" else "?"
            t = t.get("type")
        if t == "string":
            return STRING
        if t in ("int", "long"):
            return LONG
        if t == ["null", "string"]:
            return OPTIONAL
        return "?"
    return tuple((f["name"], kind(f["type"])) for f in schema["fields"])


class FactReader:
    """Facts of the current schema through :func:`read_fact`; everything else through the Serde."""

    def __init__(self, serde: Serde) -> None:
        self.serde = serde
        self.max_bytes = min(serde.max_bytes, FACT_MAX_BYTES)
        self.fast = schema_kinds(serde.current.raw) == FIELDS
        if not self.fast:
            log.warning("fact schema does not match the fast reader; decoding every fact with fastavro",
                        extra={"kv": {"schema_version": serde.current.version}})

    _header: bytes | None = None  # the first fact goes through current_datum_start

    def read(self, data: bytes) -> TransitionDict:
        # A datum framed with the header that the Serde last said was the current schema's (the single-object
        # fingerprint, or a registry id, which a Serde resolves once and for all) starts after it, as
        # current_datum_start would answer, without asking it again for every fact.
        header = self._header
        if header is not None and data and data.startswith(header) and len(data) <= self.max_bytes:
            start: int | None = len(header)
        elif len(data) > FACT_MAX_BYTES:  # forged: no scorer writes one (limits.FACT_MAX_BYTES)
            raise DecodeError(f"access fact of {len(data)} bytes exceeds {FACT_MAX_BYTES}", reason="oversized")
        else:
            start = self.serde.current_datum_start(data) if self.fast else None
            if start is not None:
                self._header = data[:start]
        if start is not None:
            try:
                return read_fact(data, start)
            except (IndexError, ValueError, EOFError):  # UnicodeDecodeError is a ValueError
                pass  # Serde decides: it reads what it can and names the reason of what it cannot
        return as_event(self.serde.decode(data).record)
