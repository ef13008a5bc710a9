"""What the command line says when something fails: one exit code per kind of failure, and one mapping
from exceptions (agentgov's own and the common infrastructure ones) to a sentence saying what is wrong
and what to do.

Example::

    failure = explain(exc)
    click.echo(failure.text(), err=True)
    sys.exit(failure.code)

The codes are part of the CLI contract (README, "Exit codes"); scripts branch on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .errors import (
    AgentgovError,
    BrokerError,
    ConfigError,
    PolicyError,
    PublishError,
    SinkError,
    StoreLocked,
    StoreMissing,
)
from .inert import inert
from .settings import redact_urls


class Exit(IntEnum):
    """``agentgov`` exit codes."""

    OK = 0
    INCOMPLETE = 1       # the command could not do all it was asked: rejected lines, no such run
    USAGE = 2            # bad command line (click's own code)
    CONFIG = 3           # invalid or unknown AGENTGOV_* setting
    POLICY = 4           # invalid governance policy file
    STORE_MISSING = 5    # no audit store at the DSN
    STORE_LOCKED = 6     # the embedded store is open in another process
    STORE = 7            # the audit store failed or is unreachable
    BROKER = 8           # the broker is unreachable or failed to start
    UNDELIVERED = 9      # events were not delivered to the broker
    INTERNAL = 70        # a bug: rerun with --debug and report the traceback
    INTERRUPTED = 130    # Ctrl-C


@dataclass(frozen=True)
class Failure:
    code: Exit
    message: str
    hint: str = ""

    def text(self) -> str:
        """One or two lines for stderr."""
        return f"agentgov: {self.message}" + (f"\n  {self.hint}" if self.hint else "")


def printable(text: str, limit: int = 400) -> str:
    """First line of ``text``, made :func:`~pipeline.inert.inert` (an error may quote an event: no terminal
    escapes, no bidi reordering), without the user info of any URL in it, shortened."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = inert(redact_urls(first))
    return first if len(first) <= limit else first[:limit] + "…"


# librdkafka error names that mean "cannot reach the cluster" rather than a bad request
_UNREACHABLE = {"_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT", "_RESOLVE", "_MSG_TIMED_OUT"}


def explain(exc: BaseException) -> Failure:
    """The exit code and sentence for ``exc``. Order matters: the most specific classes first."""
    msg = printable(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return Failure(Exit.INTERRUPTED, "interrupted")
    if isinstance(exc, StoreMissing):
        return Failure(Exit.STORE_MISSING, msg)
    if isinstance(exc, StoreLocked):
        return Failure(Exit.STORE_LOCKED, msg)
    if isinstance(exc, SinkError):
        return Failure(Exit.STORE, msg, "check AGENTGOV_CLICKHOUSE_DSN and that the store is up "
                                        "(docs/runbooks/store-write-errors.md)")
    if isinstance(exc, PolicyError):
        return Failure(Exit.POLICY, msg, "fix the file (docs/policy.md); `agentgov policy check FILE` validates it")
    if isinstance(exc, ConfigError):
        return Failure(Exit.CONFIG, msg)
    if isinstance(exc, BrokerError):
        return Failure(Exit.BROKER, msg)
    if isinstance(exc, PublishError):
        return Failure(Exit.UNDELIVERED, msg, "nothing was lost silently: republish the events named above "
                                              "once the broker is reachable")
    if isinstance(exc, AgentgovError) and exc.reason == "dlq":  # pipeline.dlq.DlqError: no such letter, cut payload
        return Failure(Exit.INCOMPLETE, msg, "see `agentgov dlq list` and docs/runbooks/dead-letters.md")
    if isinstance(exc, AgentgovError):  # a command's own refusal (`dlq show` of a missing ref...): it says why
        return Failure(Exit.INCOMPLETE, msg)
    code = _kafka_code(exc)
    if code is not None:
        if code in _UNREACHABLE:
            return Failure(Exit.BROKER, f"cannot reach the broker: {msg}",
                           "start `agentgov run`, or check AGENTGOV_KAFKA_BOOTSTRAP and the cluster")
        return Failure(Exit.BROKER, f"the broker refused the request: {msg}")
    if _from_module(exc, "clickhouse_connect", "chdb"):
        return Failure(Exit.STORE, f"the audit store failed: {msg}", "check AGENTGOV_CLICKHOUSE_DSN and that the "
                                                                   "store is up")
    return Failure(Exit.INTERNAL, f"unexpected error: {type(exc).__name__}: {msg}",
                   "this is a bug: rerun with --debug and report the traceback")


def _kafka_code(exc: BaseException) -> str | None:
    if not _from_module(exc, "confluent_kafka", "cimpl"):
        return None
    err = exc.args[0] if exc.args else None
    name = getattr(err, "name", None)
    return str(name()) if callable(name) else ""


def _from_module(exc: BaseException, *prefixes: str) -> bool:
    module = type(exc).__module__ or ""
    return any(module == p or module.startswith(p + ".") for p in prefixes)
