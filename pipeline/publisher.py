"""The agent SDK: validate, complete, chain and publish transitions.

Example::

    with TransitionPublisher(Settings()) as pub:
        pub.publish({"workflow_id": "jml-provisioning", ...})   # raises EventInvalid naming the field
    # leaving the block flushes; undelivered events raise PublishError
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from pydantic import ValidationError as PydanticValidationError

from .errors import PublishError, RegistryUnavailable, ValidationError
from .events import AgentTransition, check_values, event_hash, sign
from .inert import inert
from .limits import Limits
from .metrics import Metrics
from .schemas import SchemaSet
from .serde import Serde, make_registry
from .settings import Settings

log = logging.getLogger(__name__)

PRODUCER_GONE = frozenset({KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH,
                           KafkaError.INVALID_PRODUCER_ID_MAPPING, KafkaError._FENCED})
"""Delivery errors that say the producer's identity is no longer valid: a broker that restarted without its
state (Tansu keeps none) fenced the idempotent producer that replaced a failed one. Not flagged fatal, yet
every later record fails the same way: the producer is replaced as after a fatal error (seen after a Tansu
restart: events resent through one producer were refused each time, for 90 s)."""

_NOT_AUTHORIZED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                   KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED,
                   KafkaError._AUTHENTICATION}
_TIMED_OUT = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}


def failure_reason(err: KafkaError) -> str:
    """A closed label set for delivery failures (never the broker's free text)."""
    code = err.code()
    if code in _NOT_AUTHORIZED:
        return "not_authorized"
    return "timed_out" if code in _TIMED_OUT else "other"


class EventInvalid(ValidationError):
    """A draft event failed validation; nothing was sent. ``fields`` names the offending paths."""

    reason = "invalid_event"


NAME_SHOWN_MAX = 64  # a key an error message quotes is the draft's: shown inert, and cut at this length


def _shown(part: object) -> str:
    text = inert(part)
    return text if len(text) <= NAME_SHOWN_MAX else text[:NAME_SHOWN_MAX] + "\u2026"


def validate(draft: Mapping[str, Any] | AgentTransition) -> AgentTransition:
    if isinstance(draft, AgentTransition):
        return draft
    try:
        return AgentTransition.model_validate(draft)
    except PydanticValidationError as exc:
        paths = [".".join(_shown(p) for p in e["loc"]) for e in exc.errors()]
        problems = [f"{path}: {e['msg']}" for path, e in zip(paths, exc.errors(), strict=True)]
        raise EventInvalid("invalid event: " + "; ".join(problems), paths=paths) from exc


def loads(text: str | bytes) -> Any:
    """One JSON document (an event's JSON form), refusing an object that repeats a key with
    :class:`EventInvalid`. JSON leaves a repeated key's meaning open: parsers keep the first, the last or
    both, so what a reviewer or another tool reads in the file could differ from what is sent. Raises
    :class:`json.JSONDecodeError` for text that is not JSON."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EventInvalid(f"invalid event: duplicate key {_shown(key)!r} in one object (which value is "
                               "meant is ambiguous)", paths=[_shown(key)])
        out[key] = value
    return out


class TransitionPublisher:
    """Publishes transitions with an idempotent, acks=all producer keyed by ``run_id``.

    Fills in ``event_id``, ``occurred_at`` and ``evidence`` (hash, and the previous step's hash per run).
    Delivery failures are collected and raised by :meth:`flush`, and passed to ``on_error`` if given."""

    def __init__(
        self,
        settings: Settings,
        *,
        serde: Serde | None = None,
        producer: Producer | None = None,
        signing_key: tuple[str, bytes] | None = None,
        on_error: Callable[[str, KafkaError], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.topic_transitions
        if serde is None:
            serde = Serde(SchemaSet.load(), make_registry(settings), subject=f"{self.topic}-value",
                          register_wait=settings.schema_registry_wait_seconds)
        self.serde = serde
        self.limits = Limits.from_settings(settings)
        self._owns_producer = producer is None
        self._fatal: KafkaError | None = None
        self._timed_out: KafkaError | None = None  # a delivery timed out: the next flush replaces the producer
        self.producer = producer or self._new_producer()
        self.signing_key = signing_key
        self.on_error = on_error
        self.metrics = metrics
        self._last_hash: dict[str, str] = {}
        self.failed: list[tuple[str, str]] = []
        self.delivered = 0
        self._in_flight: set[str] = set()  # sent, no delivery report yet: named if a flush times out

    def _new_producer(self) -> Producer:
        return Producer(self.settings.kafka_config(**{
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4",
            "message.timeout.ms": 30000, "error_cb": self._client_error,
        }))

    def _client_error(self, err: KafkaError) -> None:
        """librdkafka's error callback. Most errors are transient and retried by the client; a fatal one (the
        idempotent producer's sequence lost, e.g. a broker that restarted without its state) leaves the
        producer unusable: :meth:`flush` then reports what was not delivered and starts a new producer."""
        if err.fatal():
            self._fatal = err
            log.error("producer failed fatally; undelivered events will be reported and a new producer started",
                      extra={"kv": {"error": str(err)}})

    def complete(self, draft: Mapping[str, Any] | AgentTransition) -> dict[str, Any]:
        """Validate a draft and return the Avro record with ids, timestamps and evidence filled in."""
        ev = validate(draft)
        updates: dict[str, Any] = {}
        if ev.event_id is None:
            updates["event_id"] = uuid.uuid4()
        if ev.occurred_at is None:
            updates["occurred_at"] = datetime.now(UTC)
        if updates:
            ev = ev.model_copy(update=updates)
        record = ev.model_dump(mode="json")
        record["occurred_at"] = int((ev.occurred_at or updates["occurred_at"]).timestamp() * 1000)
        given = record.get("evidence") or {}
        prev = given.get("prev_event_hash") or (self._last_hash.get(ev.run_id) if ev.step > 0 else None)
        record["evidence"] = {"event_hash": "", "prev_event_hash": prev, "signature": None, "key_id": None}
        record["evidence"]["event_hash"] = given.get("event_hash") or event_hash(record)
        if self.signing_key is not None:
            key_id, key = self.signing_key
            record["evidence"]["signature"] = sign(record, key)
            record["evidence"]["key_id"] = key_id
        self._last_hash[ev.run_id] = record["evidence"]["event_hash"]
        return record

    def publish(self, draft: Mapping[str, Any] | AgentTransition) -> str:
        """Validate, complete and send one event asynchronously. Returns its ``event_id``."""
        record = self.complete(draft)
        return self.send(record)

    def send(self, record: dict[str, Any]) -> str:
        """Send a completed Avro record as is."""
        event_id = str(record["event_id"])
        payload = self.encode(record)
        self._in_flight.add(event_id)  # until its delivery report: named if the producer fails first
        try:
            while True:
                try:
                    self.producer.produce(self.topic, payload, key=record["run_id"].encode(),
                                          on_delivery=self._delivered(event_id))
                    break
                except BufferError:
                    self.producer.poll(0.1)  # local queue full: wait for deliveries, never drop
            self.producer.poll(0)
        except (KafkaException, SystemError) as exc:
            self._failed_producer(exc, event_id)
        if self._fatal is not None:
            self._abandon(f"the producer failed fatally: {self._fatal.str()}")
        return event_id

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Check a completed record against :mod:`pipeline.limits` and encode it; raises
        :class:`EventInvalid` naming the field (nothing is sent)."""
        try:
            check_values(dict(record), now_ms=int(datetime.now(UTC).timestamp() * 1000), limits=self.limits)
            payload = self.serde.encode(dict(record))
            self.limits.check_size(len(payload))
        except ValidationError as exc:
            field = exc.fields.get("field") or ""
            where = f"{field}: " if field else ""
            raise EventInvalid(f"invalid event: {where}{exc.message}", paths=[field] if field else []) from exc
        except RegistryUnavailable as exc:  # waited schema_registry_wait_seconds for it: nothing was sent
            raise PublishError(f"schema registry unreachable: {exc.message}", reason="registry") from exc
        except (ValueError, TypeError, KeyError, OverflowError) as exc:  # fastavro's view of a bad record
            raise EventInvalid(f"invalid event: cannot encode: {type(exc).__name__}: {exc}"[:600],
                               paths=[]) from exc
        return payload

    def _delivered(self, event_id: str) -> Callable[[KafkaError | None, Message], None]:
        def callback(err: KafkaError | None, msg: Message) -> None:
            self._in_flight.discard(event_id)
            if err is None:
                self.delivered += 1
                return
            self.failed.append((event_id, str(err)))
            if err.code() in PRODUCER_GONE and self._fatal is None:
                self._fatal = err  # the next flush or publish reports what is undelivered and replaces it
                log.error("producer fenced; undelivered events will be reported and a new producer started",
                          extra={"kv": {"error": str(err)}})
            elif err.code() == KafkaError._MSG_TIMED_OUT and self._timed_out is None:
                # An idempotent producer whose record timed out is not to be trusted with the next ones: a
                # broker that restarted without its state (Tansu) answers UNKNOWN_PRODUCER_ID to every request,
                # librdkafka bumps the epoch locally and sends again, for ever, and every later record timed out
                # too (session 26: nothing delivered for minutes after a Tansu restart). The next flush reports
                # what is undelivered and starts a new producer, which asks the broker for an id it knows.
                self._timed_out = err
            reason = failure_reason(err)
            if self.metrics is not None:
                self.metrics.publish_failures.labels(reason=reason).inc()
            log.error("delivery failed", extra={"kv": {"event_id": event_id, "reason": reason, "topic": self.topic,
                                                       "error": str(err)}})
            if self.on_error is not None:
                self.on_error(event_id, err)

        return callback

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every pending delivery. Raises :class:`PublishError` if any event was not delivered."""
        try:
            remaining = self.producer.flush(timeout)
        except (KafkaException, SystemError) as exc:
            self._failed_producer(exc)
        if self._fatal is not None:
            self._abandon(f"the producer failed fatally: {self._fatal.str()}")
        if self._timed_out is not None and self._owns_producer:
            log.error("deliveries timed out; undelivered events are reported and a new producer started",
                      extra={"kv": {"error": str(self._timed_out)}})
            self._abandon(f"deliveries timed out: {self._timed_out.str()}")
        if remaining:
            # Named like failed ones: the caller can resend exactly these (the same event_id is stored once).
            failed, self.failed = self.failed, []
            ids = sorted(self._in_flight) + [e for e, _ in failed]
            raise PublishError(f"{remaining} events still undelivered after {timeout}s"
                               + (f", {len(failed)} not delivered" if failed else ""),
                               pending=remaining, event_ids=ids)
        if self.failed:
            failed, self.failed = self.failed, []
            raise PublishError(f"{len(failed)} events were not delivered: {failed[0][1]}",
                               event_ids=[e for e, _ in failed])

    def _failed_producer(self, exc: KafkaException | SystemError, event_id: str | None = None) -> NoReturn:
        """A producer call raised. A fatal error can surface this way instead of through the error callback:
        confluent-kafka 2.16 raised one while serving delivery reports, as a SystemError whose cause is the
        KafkaException (seen when a Tansu broker restarted without its state). Once the producer has failed
        fatally, ``produce`` refuses every record with ``_FATAL`` ("Local: Fatal error"), an error not itself
        flagged fatal, and possibly before the error callback has said so: that too is the producer's failure,
        not the record's (taken for the record's, every later event was refused one by one, the producer never
        replaced). A producer call refusing one record for a reason of its own fails that event alone."""
        cause = exc if isinstance(exc, KafkaException) else exc.__cause__
        err = cause.args[0] if isinstance(cause, KafkaException) and cause.args else None
        if isinstance(err, KafkaError) and not err.fatal() and err.code() != KafkaError._FATAL \
                and event_id is not None:
            self._in_flight.discard(event_id)
            raise PublishError(f"event {event_id} not sent: {err.str()}", event_ids=[event_id]) from exc
        self._abandon(f"the producer failed: {cause or exc}")

    def _abandon(self, why: str) -> NoReturn:
        """Report every event not known delivered as failed (the caller can resend them: an event_id is stored
        once) and, if this publisher made its producer, start a new one (a failed idempotent producer stays
        failed); raises :class:`PublishError`."""
        failed, self.failed = self.failed, []
        unreported = self._in_flight - {e for e, _ in failed}
        ids = sorted(self._in_flight | {e for e, _ in failed})
        self._in_flight.clear()
        self._fatal = self._timed_out = None
        if self._owns_producer:
            old, self.producer = self.producer, self._new_producer()
            with contextlib.suppress(Exception):
                old.purge()
        if self.metrics is not None and unreported:
            self.metrics.publish_failures.labels(reason="other").inc(len(unreported))
        raise PublishError(f"{len(ids)} events were not delivered: {why}", event_ids=ids)

    def __enter__(self) -> TransitionPublisher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.flush()
