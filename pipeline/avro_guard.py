"""A walk over an Avro datum before fastavro decodes it: what fastavro accepts but must not be accepted.

fastavro (1.13) reads a datum as far as the bytes go, and three things it takes are refused here, in one pass
over the bytes that builds nothing (``Serde`` runs it on every datum before fastavro):

- **Collection sizes, while reading.** An array or map whose entries go over a known limit
  (:data:`pipeline.limits.COLLECTION_MAX`, e.g. ``inputs_used`` 256) is refused at the block count that
  crosses it, before a single entry is built: fastavro built all of them first (460,000 empty
  ``inputs_used`` entries in a 920 KB event cost 290 ms and 89 MB before ``check_record`` counted them).
  DecodeError ``invalid_value`` naming the field, as ``check_record`` names it.
- **More array entries that take no bytes than the datum has bytes** (an array of nulls in a registered
  schema version: fastavro loops over 2**62 of them). DecodeError ``malformed`` naming the field.
- **A key repeated in a map.** fastavro keeps the last value; ClickHouse's ``Map`` keeps every entry and
  ``attributes['k']`` answers the first, so the store would hold evidence other than what was scored and
  hashed. DecodeError ``invalid_value`` naming the field ("duplicate key").
- **A varint longer than 10 bytes, or beyond 64 bits** (a 10th byte above 1). fastavro reads one, the
  store's Avro reader refuses it ("Invalid Avro varint"), so the scorer and the correlators would act on an
  event the store never holds. DecodeError ``malformed``. (A padded varint within 10 bytes is read alike by
  all of them, and accepted.)
- **An enum or union index the writer schema does not have.** fastavro indexes its symbol or branch list
  with it, so a negative one reads from the end (-1 as the last action, a union's last branch); the store
  refuses it ("enum index out of range", a negative length). DecodeError ``malformed`` naming the field.

Everything else it cannot walk (a datum cut short, a negative length) it leaves to fastavro, whose reason
stands (``truncated``, ...). The walker is Python source made from the
writer schema once (straight-line per field, as ``fact_reader.py`` does), about 3 µs for a typical event.

Example::

    guard = compile_guard(schema_version.raw, COLLECTION_MAX)
    guard(data, start)          # raises DecodeError; else the datum's end (None: fastavro decides)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from .errors import DecodeError

log = logging.getLogger(__name__)

Guard = Callable[[bytes, int], "int | None"]
"""``guard(data, start)``: where the datum at ``data[start:]`` ends, or None where fastavro decides (the walk
could not go on); raises DecodeError for what it refuses."""


class _Bail(Exception):
    """The walk cannot go on (the datum is cut short or bad in a way fastavro names): fastavro decides."""


def _overlong(data: bytes, pos: int) -> DecodeError:
    return DecodeError(f"the Avro varint at byte {pos} of the message is longer than 10 bytes or beyond 64 "
                       f"bits (the store refuses it)", reason="malformed")


def varint(data: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at ``pos`` (its first byte has the continuation bit set, or not) and the position
    after it. More than 10 bytes, or a 10th byte over 1 (bits past the 64th), is a DecodeError ``malformed``;
    a datum that ends inside it raises IndexError."""
    start = pos
    b = data[pos]
    n, shift, pos = b & 0x7F, 7, pos + 1
    while b & 0x80:
        b = data[pos]
        pos += 1
        if shift == 63 and b > 1:
            raise _overlong(data, start)
        n |= (b & 0x7F) << shift
        shift += 7
    return (n >> 1) ^ -(n & 1), pos


def _out_of_range(what: str, index: int, path: str) -> DecodeError:
    return DecodeError(f"{path or 'the datum'} has {what} index {index}, which the schema does not have (fastavro "
                       f"would read a negative one from the end; the store refuses it)", reason="malformed",
                       field=path)


def _too_many(path: str, count: int, cap: int) -> DecodeError:
    return DecodeError(f"{path} has {count} or more entries, over {cap} (refused while decoding)",
                       reason="invalid_value", field=path)


def _zero_size(path: str, count: int, size: int) -> DecodeError:
    return DecodeError(f"{path or 'the datum'} has {count} or more entries that take no bytes, more than the "
                       f"{size}-byte message holds (fastavro would loop over every one)", reason="malformed",
                       field=path)


def _duplicate(path: str, key: bytes) -> DecodeError:
    shown = key[:64].decode("utf-8", "replace")
    return DecodeError(f"{path} repeats the key {shown!r} (duplicate key: the scorer would read one value, "
                       f"the store keeps both)", reason="invalid_value", field=path)


_PRIMITIVE = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


class _Source:
    """Python source of one walker, made from a schema (named types resolved, recursion refused)."""

    def __init__(self, caps: Mapping[tuple[str, str], int]) -> None:
        self.caps = caps
        self.lines: list[str] = []
        self.named: dict[str, Any] = {}
        self.counter = 0
        self.open: set[str] = set()
        self.cap: int | None = None  # the limit of the field being walked, taken by its array or map

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    # -- primitives --------------------------------------------------------------------------
    def long(self, ind: int, into: str | None = None) -> None:
        """Read a varint; into ``into`` when given (its value), else just past it."""
        self.emit(ind, "b = data[pos]")
        self.emit(ind, "if b < 128:")
        self.emit(ind + 1, f"{into} = (b >> 1) ^ -(b & 1); pos += 1" if into else "pos += 1")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"{into or '_'}, pos = varint(data, pos)")

    def length(self, ind: int, into: str) -> None:
        self.long(ind, into)
        self.emit(ind, f"if {into} < 0:")
        self.emit(ind + 1, "raise Bail")

    # -- types -------------------------------------------------------------------------------
    def full(self, name: str, namespace: str | None) -> str:
        return name if "." in name or not namespace else f"{namespace}.{name}"

    def resolve(self, name: str, namespace: str | None) -> Any:
        for key in (self.full(name, namespace), name):
            if key in self.named:
                return self.named[key]
        raise ValueError(f"unknown named type {name}")

    def walk(self, t: Any, ind: int, path: str, namespace: str | None) -> None:
        if isinstance(t, list):
            return self.union(t, ind, path, namespace)
        if isinstance(t, str):
            if t not in _PRIMITIVE:
                return self.walk(self.resolve(t, namespace), ind, path, namespace)
            return self.primitive(t, ind)
        kind = t["type"]
        if kind in ("record", "error"):
            return self.record(t, ind, path, namespace)
        if kind == "enum":
            self.name(t, namespace)
            e = self.fresh("e")
            self.long(ind, e)
            self.emit(ind, f"if not 0 <= {e} < {len(t['symbols'])}:")
            self.emit(ind + 1, f"raise out_of_range('enum', {e}, {path!r})")
            return None
        if kind == "fixed":
            self.name(t, namespace)
            return self.emit(ind, f"pos += {int(t['size'])}")
        if kind == "array":
            return self.collection(t["items"], ind, path, namespace, None)
        if kind == "map":
            return self.collection(t["values"], ind, path, namespace, "string")
        return self.walk(kind, ind, path, namespace)  # {"type": "string", "logicalType": ...}

    def name(self, t: dict[str, Any], namespace: str | None) -> str:
        full = self.full(t["name"], t.get("namespace", namespace))
        self.named[full] = t
        self.named[t["name"]] = t
        return full

    def primitive(self, t: str, ind: int) -> None:
        if t in ("int", "long"):
            self.long(ind)
        elif t in ("string", "bytes"):  # a length of one byte (not negative) inline
            n = self.fresh("n")
            self.emit(ind, "b = data[pos]")
            self.emit(ind, "if b < 128 and not b & 1:")
            self.emit(ind + 1, "pos += 1 + (b >> 1)")
            self.emit(ind, "else:")
            self.emit(ind + 1, f"{n}, pos = varint(data, pos)")
            self.emit(ind + 1, f"if {n} < 0:")
            self.emit(ind + 2, "raise Bail")
            self.emit(ind + 1, f"pos += {n}")
        elif t == "boolean":
            self.emit(ind, "pos += 1")
        elif t == "float":
            self.emit(ind, "pos += 4")
        elif t == "double":
            self.emit(ind, "pos += 8")
        # null: nothing

    def union(self, branches: list[Any], ind: int, path: str, namespace: str | None) -> None:
        u = self.fresh("u")
        self.long(ind, u)
        for i, branch in enumerate(branches):
            self.emit(ind, f"{'if' if i == 0 else 'elif'} {u} == {i}:")
            size = len(self.lines)
            self.walk(branch, ind + 1, path, namespace)
            if len(self.lines) == size:
                self.emit(ind + 1, "pass")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"raise out_of_range('union branch', {u}, {path!r})")

    def record(self, t: dict[str, Any], ind: int, path: str, namespace: str | None) -> None:
        full = self.name(t, namespace)
        if full in self.open:
            raise ValueError(f"recursive type {full}")
        self.open.add(full)
        inner = t.get("namespace", namespace) if "." not in t["name"] else t["name"].rpartition(".")[0]
        for f in t["fields"]:
            sub = f"{path}.{f['name']}" if path else f["name"]
            self.cap = self.caps.get((full, f["name"]))
            self.walk(f["type"], ind, sub, inner)
        self.open.discard(full)

    def collection(self, items: Any, ind: int, path: str, namespace: str | None, keys: str | None) -> None:
        """An array (``keys`` None) or a map: blocks of a count (negative: then a byte size) until 0."""
        cap, self.cap = self.cap, None
        count, total, seen, n = self.fresh("c"), self.fresh("t"), self.fresh("s"), self.fresh("n")
        self.emit(ind, f"{total} = 0")
        if keys:
            self.emit(ind, f"{seen} = set()")
        self.emit(ind, "while True:")
        self.long(ind + 1, count)
        self.emit(ind + 1, f"if {count} == 0:")
        self.emit(ind + 2, "break")
        self.emit(ind + 1, f"if {count} < 0:")
        self.emit(ind + 2, f"{count} = -{count}")
        self.long(ind + 2)
        self.emit(ind + 1, f"{total} += {count}")
        if cap is not None:
            self.emit(ind + 1, f"if {total} > {cap}:")
            self.emit(ind + 2, f"raise too_many({path!r}, {total}, {cap})")
        if keys:
            # Every entry takes a byte at least (its key's length): more entries than bytes left is a datum cut
            # short (fastavro's answer), and the walk stops before looping over them.
            self.emit(ind + 1, f"if {count} > len(data) - pos:")
            self.emit(ind + 2, "raise Bail")
        else:
            # So does an array's entry, unless its type takes no byte at all (null, a fixed of size 0, a record
            # of such): one entry is walked to tell. Bytes taken: the datum is cut short, fastavro's answer.
            # None: fastavro would loop over every entry (a registered schema with an array of nulls and a
            # count of 2**62 held a scorer for good), so more of them than the datum has bytes is refused.
            # An entry that cannot be walked (bytes of a datum cut short read as an entry: an index out of range)
            # takes bytes too: fastavro decides, as before the probe (its reason, ``truncated``, stands).
            probe = self.fresh("p")
            self.emit(ind + 1, f"if {total} > len(data) or {count} > len(data) - pos:")
            self.emit(ind + 2, f"{probe} = pos")
            self.emit(ind + 2, "try:")
            size = len(self.lines)
            self.walk(items, ind + 3, path, namespace)
            if len(self.lines) == size:
                self.emit(ind + 3, "pass")
            self.emit(ind + 2, "except DecodeError:")
            self.emit(ind + 3, "raise Bail")
            self.emit(ind + 2, f"if pos != {probe}:")
            self.emit(ind + 3, "raise Bail")
            self.emit(ind + 2, f"if {total} > len(data):")
            self.emit(ind + 3, f"raise zero_size({path!r}, {total}, len(data))")
        self.emit(ind + 1, f"for _ in range({count}):")
        if keys:
            self.length(ind + 2, n)
            self.emit(ind + 2, f"if pos + {n} > len(data):")
            self.emit(ind + 3, "raise Bail")
            self.emit(ind + 2, f"k = data[pos:pos + {n}]; pos += {n}")
            self.emit(ind + 2, f"if k in {seen}:")
            self.emit(ind + 3, f"raise duplicate({path!r}, k)")
            self.emit(ind + 2, f"{seen}.add(k)")
        size = len(self.lines)
        self.walk(items, ind + 2, path, namespace)
        if len(self.lines) == size:
            self.emit(ind + 2, "pass")


@lru_cache(maxsize=64)
def _compiled(schema_json: str, caps: tuple[tuple[tuple[str, str], int], ...]) -> tuple[Guard, str]:
    import json

    src = _Source(dict(caps))
    src.emit(0, "def guard(data, pos):")
    src.emit(1, "try:")
    src.walk(json.loads(schema_json), 2, "", None)
    src.emit(1, "except (IndexError, Bail):")
    src.emit(2, "return None")
    src.emit(1, "return pos")
    source = "\n".join(src.lines)
    namespace: dict[str, Any] = {"varint": varint, "Bail": _Bail, "too_many": _too_many, "duplicate": _duplicate,
                                 "out_of_range": _out_of_range, "zero_size": _zero_size, "DecodeError": DecodeError}
    exec(compile(source, "<pipeline.avro_guard>", "exec"), namespace)  # our own source, made above
    return namespace["guard"], source


def compile_guard(schema: dict[str, Any], caps: Mapping[tuple[str, str], int]) -> Guard | None:
    """The walker for datums written with ``schema`` (JSON form, named types inline or referenced), with the
    entry limits ``caps`` ((record full name, field name) -> entries). None for a schema it cannot walk (a
    recursive type): fastavro then reads alone, and a warning is logged."""
    import json

    try:
        return _compiled(json.dumps(schema, sort_keys=True), tuple(sorted(caps.items())))[0]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        log.warning("no decode guard for this schema; fastavro reads it alone",
                    extra={"kv": {"schema": str(schema.get("name", "?")) if isinstance(schema, dict) else "?",
                                  "error": str(exc)}})
        return None


def guard_source(schema: dict[str, Any], caps: Mapping[tuple[str, str], int]) -> str:
    """The walker's Python source (for tests and for reading)."""
    import json

    return _compiled(json.dumps(schema, sort_keys=True), tuple(sorted(caps.items())))[1]
