"""One exception tree. Subclasses are named for what the caller does with them.

- :class:`DecodeError` and :class:`ValidationError`: the record goes to the dead-letter topic.
- :class:`SinkError`: retried; the offset is not committed. :class:`RegistryUnavailable` is one: a registry
  that does not answer stalls the consumer, it never dead-letters what it could not look up.
- :class:`ConfigError`: fatal at start.
- :class:`PublishError`: surfaced to the agent that published.
"""

from __future__ import annotations

from typing import Any


class AgentgovError(Exception):
    """Root of every error agentgov raises. Carries a stable ``reason`` code and structured fields."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.fields = fields

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(AgentgovError):
    """Bad settings or policy file. Fatal at start."""

    reason = "config"


class DeadLetter(AgentgovError):
    """Base of errors whose record goes to the dead-letter topic with ``reason`` in its headers."""

    reason = "dead_letter"


class DecodeError(DeadLetter):
    """The bytes are not a decodable event (framing, unknown schema, truncated Avro)."""

    reason = "decode"


class ValidationError(DeadLetter):
    """The event decoded but its values are invalid (tier out of range, negative step...)."""

    reason = "invalid"


class SinkError(AgentgovError):
    """The store rejected or failed a write. Retry; do not commit."""

    reason = "sink"


class RegistryUnavailable(SinkError):
    """The schema registry did not answer (down, hung, 5xx). Never a dead letter: retry; do not commit."""

    reason = "registry_unavailable"


class PublishError(AgentgovError):
    """An event could not be delivered to the broker."""

    reason = "publish"


class BrokerError(AgentgovError):
    """The broker could not be started or reached."""

    reason = "broker"


# Closed set of dead-letter reasons. Used as a metric label, so it must stay closed.
DLQ_REASONS = (
    "bad_magic",
    "unknown_schema",
    "truncated",
    "malformed",
    "oversized",
    "unknown_enum",
    "invalid_value",
    "invalid_utf8",
    "registry",
    "internal",
    "unproducible",
    "store_rejected",
)

# Closed set of poison reasons: records that would have stopped a partition had they not been isolated
# (agentgov_poison_records_total). ``oversized``: the scorer's output did not fit in a record;
# ``produce_failed``: the broker refused an output record; ``store_rejected``: the store refused a row.
POISON_REASONS = ("oversized", "produce_failed", "store_rejected")

class PolicyError(ConfigError):
    """A governance policy file is unreadable or invalid. Fatal at start; a reload keeps the previous one."""

    reason = "policy"


class StoreMissing(SinkError):
    """The audit store (database and tables) has not been created at the configured DSN."""

    reason = "store_missing"


class StoreLocked(SinkError):
    """An embedded (chdb) store is open in another process; chdb serves a data path from one process."""

    reason = "store_locked"
