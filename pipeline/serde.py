"""Avro serialization in two wire formats, told apart by their first bytes.

- Avro single-object encoding: ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + datum. Schemas come from
  ``schemas/``. The embedded default.
- Confluent wire format: ``00`` + 4-byte big-endian registry id + datum, when a Schema Registry is configured.

A registry id is trusted only when the schema it names is the expected record (its full name): an id that
names another record, or that the registry does not know, is a :class:`DecodeError` (dead letter). A registry
that does not answer is :class:`RegistryUnavailable`: the caller retries, nothing is dead-lettered for it.

Example::

    serde = Serde(SchemaSet.load())
    data = serde.encode(record)
    decoded = serde.decode(data)            # raises DecodeError with a closed-set ``reason``
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import to_parsing_canonical_form

from .avro_guard import Guard, compile_guard
from .errors import ConfigError, DecodeError, RegistryUnavailable
from .limits import COLLECTION_MAX
from .schemas import TRANSITION, SchemaSet, SchemaVersion, _strip_logical

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

    from .settings import Settings

SOE_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
SOE_HEADER = 10
CONFLUENT_HEADER = 5


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded record, its raw datum bytes, and whether they are already in the current schema."""

    record: dict[str, Any]
    datum: bytes
    current: bool
    writer_version: int | None


def make_registry(settings: Settings) -> SchemaRegistryClient | None:
    """The Schema Registry client the settings ask for, or None for single-object encoding."""
    if not settings.schema_registry_url:
        return None
    from confluent_kafka.schema_registry import SchemaRegistryClient

    conf: dict[str, Any] = {"url": settings.schema_registry_url, "timeout": settings.schema_registry_timeout_seconds,
                            "max.retries": 1, "retries.wait.ms": 200, "retries.max.wait.ms": 1000}
    if settings.schema_registry_basic_auth:
        conf["basic.auth.user.info"] = settings.schema_registry_basic_auth.get_secret_value()
    return SchemaRegistryClient.new_client(conf)


def split_header(data: bytes) -> tuple[bytes, int | None]:
    """The wire header of ``data``, and the registry id it names (None for single-object encoding, whose
    header is the magic and the writer schema's fingerprint, ``header[2:]``). The datum is ``data[len(header):]``.

    Raises :class:`DecodeError`: ``bad_magic`` for neither format, ``truncated`` for a header cut short.
    """
    if data[:2] == SOE_MAGIC:
        if len(data) < SOE_HEADER:
            raise DecodeError("single-object header truncated", reason="truncated")
        return data[:SOE_HEADER], None
    if data[:1] == CONFLUENT_MAGIC:
        if len(data) < CONFLUENT_HEADER:
            raise DecodeError("registry header truncated", reason="truncated")
        return data[:CONFLUENT_HEADER], struct.unpack(">I", data[1:CONFLUENT_HEADER])[0]
    raise DecodeError(f"unknown magic byte 0x{data[0]:02x}" if data else "empty message", reason="bad_magic")


def full_name(schema: dict[str, Any]) -> str:
    name = str(schema.get("name", ""))
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def registry_schema(registry: SchemaRegistryClient, schema_id: int, expected: str) -> dict[str, Any]:
    """The writer schema behind ``schema_id``, checked to be the record ``expected`` (full name).

    DecodeError (``unknown_schema``) when the registry does not know the id, or the id names another record;
    RegistryUnavailable when the registry cannot answer (transport failure, timeout, any other status)."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        text = registry.get_schema(schema_id).schema_str
    except SchemaRegistryError as exc:
        if exc.http_status_code == 404:
            raise DecodeError(f"registry id {schema_id} not found: {exc.error_message}",
                              reason="unknown_schema", schema_id=schema_id) from exc
        raise RegistryUnavailable(f"registry answered {exc.http_status_code} for id {schema_id}: "
                                  f"{exc.error_message}", schema_id=schema_id, kind="status") from exc
    except Exception as exc:  # httpx transport errors and timeouts: the registry is down or hung
        raise RegistryUnavailable(f"registry unreachable looking up id {schema_id}: {type(exc).__name__}",
                                  schema_id=schema_id, kind="transport") from exc
    try:
        raw = json.loads(text or "")
    except ValueError as exc:
        raise DecodeError(f"registry id {schema_id} holds no JSON schema", reason="unknown_schema") from exc
    named = full_name(raw) if isinstance(raw, dict) else f"<{type(raw).__name__}>"
    if named != expected:
        raise DecodeError(f"registry id {schema_id} names {named}, not {expected}", reason="unknown_schema",
                          schema_id=schema_id)
    return raw


def frame_soe(fingerprint: bytes, datum: bytes) -> bytes:
    return SOE_MAGIC + fingerprint + datum


def encode_datum(parsed_schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, parsed_schema, record)
    return buf.getvalue()


def _reason_for(exc: BaseException) -> str:
    if isinstance(exc, EOFError | StopIteration | struct.error):
        return "truncated"
    if isinstance(exc, UnicodeDecodeError):
        return "invalid_utf8"
    if isinstance(exc, SchemaResolutionError):
        return "unknown_enum" if "symbol" in str(exc).lower() else "unknown_schema"
    return "malformed"


class Serde:
    """Encode and decode one record type (default: the transition) in either wire format."""

    def __init__(
        self,
        schemas: SchemaSet,
        registry: SchemaRegistryClient | None = None,
        *,
        record: str = TRANSITION,
        subject: str | None = None,
        max_bytes: int = 1_000_000,
        register_wait: float = 0.0,
    ) -> None:
        """``register_wait``: seconds to keep retrying the registration of the current schema while the
        registry does not answer (the SDK's patience); 0 raises RegistryUnavailable at once."""
        self.schemas = schemas
        self.record = record
        self.current: SchemaVersion = schemas.latest(record)
        self.registry = registry
        self.subject = subject or f"agentgov.{record}-value"
        self.max_bytes = max_bytes
        self.register_wait = register_wait
        self.full_name = full_name(self.current.raw)
        self._registry_id: int | None = None
        self._by_registry_id: dict[int, tuple[Any, bool, int | None, Guard | None]] = {}
        self._guards: dict[int, Guard | None] = {}  # by schema version
        self._known_canonical = {
            sv.canonical: sv for sv in schemas.versions[record].values()
        }

    # -- encoding -----------------------------------------------------------------------------
    def header(self) -> bytes:
        if self.registry is None:
            return SOE_MAGIC + self.current.fingerprint
        if self._registry_id is None:
            self._registry_id = self._register()
        return CONFLUENT_MAGIC + struct.pack(">I", self._registry_id)

    def _register(self) -> int:
        from confluent_kafka.schema_registry import Schema
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        assert self.registry is not None
        deadline = time.monotonic() + self.register_wait
        delay = 0.5
        while True:
            try:
                return int(self.registry.register_schema(self.subject, Schema(self.current.json(), "AVRO")))
            except SchemaRegistryError as exc:
                if 400 <= exc.http_status_code < 500:  # 409: not compatible under the subject's rule
                    raise ConfigError(f"registry refused {self.full_name} under {self.subject}: "
                                      f"{exc.http_status_code} {exc.error_message}",
                                      subject=self.subject, status=exc.http_status_code) from exc
                failure: Exception = exc
            except Exception as exc:  # transport failure or timeout
                failure = exc
            if time.monotonic() + delay > deadline:
                raise RegistryUnavailable(f"registry unreachable registering {self.subject}: "
                                          f"{type(failure).__name__}", subject=self.subject) from failure
            log.warning("registry unreachable; retrying registration",
                        extra={"kv": {"subject": self.subject, "error": type(failure).__name__}})
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def encode(self, record: dict[str, Any]) -> bytes:
        return self.header() + encode_datum(self.current.parsed, record)

    # -- decoding -----------------------------------------------------------------------------
    def decode(self, data: bytes | None) -> Decoded:
        start, parsed, current, version, guard = self._writer(data)
        assert data is not None  # _writer refused an empty message
        if guard is not None:
            guard(data, start)  # DecodeError before fastavro builds anything (avro_guard.py)
        return self._read(data, start, parsed, current, version)

    def current_datum_start(self, data: bytes | None) -> int | None:
        """Where the Avro datum of ``data`` starts when it was written with the current schema; None when it
        was written with another version. Checks framing, size and schema as :meth:`decode` does (same
        ``DecodeError``), without decoding: for readers specialised to the current schema
        (``fact_reader.py``)."""
        start, _, current, _, _ = self._writer(data)
        return start if current else None

    def _guard(self, sv: SchemaVersion) -> Guard | None:
        if sv.version not in self._guards:
            self._guards[sv.version] = compile_guard(sv.raw, COLLECTION_MAX)
        return self._guards[sv.version]

    def _writer(self, data: bytes | None) -> tuple[int, Any, bool, int | None, Guard | None]:
        """The datum's start, its writer schema (parsed), whether that is the current one, its version, and
        the guard its datum goes through before fastavro (``avro_guard.py``)."""
        if not data:
            raise DecodeError("empty message", reason="bad_magic")
        if len(data) > self.max_bytes:
            raise DecodeError(f"message of {len(data)} bytes exceeds {self.max_bytes}", reason="oversized")
        header, schema_id = split_header(data)
        if schema_id is None:
            writer = self.schemas.by_fingerprint.get(header[2:])
            if writer is None or writer.record != self.record:
                raise DecodeError(f"unknown schema fingerprint {header[2:].hex()}", reason="unknown_schema")
            return len(header), writer.parsed, writer is self.current, writer.version, self._guard(writer)
        parsed, current, version, guard = self._registry_schema(schema_id)
        return len(header), parsed, current, version, guard

    def _registry_schema(self, schema_id: int) -> tuple[Any, bool, int | None, Guard | None]:
        hit = self._by_registry_id.get(schema_id)
        if hit is not None:
            return hit
        if self.registry is None:
            raise DecodeError(f"registry id {schema_id} but no registry configured", reason="unknown_schema")
        raw = registry_schema(self.registry, schema_id, self.full_name)
        try:
            parsed = parse_schema(_strip_logical(raw))
            canonical = to_parsing_canonical_form(parse_schema(raw))
        except Exception as exc:
            raise DecodeError(f"registry id {schema_id} holds an unusable schema: {exc}",
                              reason="unknown_schema") from exc
        known = self._known_canonical.get(canonical)
        entry = ((known.parsed, known is self.current, known.version, self._guard(known)) if known
                 else (parsed, False, None, compile_guard(raw, COLLECTION_MAX)))
        self._by_registry_id[schema_id] = entry
        return entry

    def _read(self, data: bytes, start: int, writer: Any, current: bool, version: int | None) -> Decoded:
        buf = io.BytesIO(data)
        buf.seek(start)
        try:
            if current:
                record = schemaless_reader(buf, writer, None)
            else:
                record = schemaless_reader(buf, writer, self.current.parsed)
        except Exception as exc:
            raise DecodeError(f"cannot decode Avro datum: {type(exc).__name__}: {exc}",
                              reason=_reason_for(exc)) from exc
        end = buf.tell()
        if end != len(data):
            raise DecodeError(f"{len(data) - end} trailing bytes after the datum", reason="malformed")
        return Decoded(record, data[start:] if current else b"", current, version)  # type: ignore[arg-type]
