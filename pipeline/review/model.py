"""The review state machine, decision records and exception rules. Pure: no I/O, no clock (callers pass ``now``).

A finding is ``new`` until someone decides about it. Every decision is a ``ReviewDecision`` record
(decision kind, subject, version, actor, time, payload) appended to the log; the current state of a subject
is its decision with the highest version. Exceptions are versioned ``RiskException`` records.

    new ──acknowledge──▶ acknowledged ──close──▶ closed ──reopen──▶ acknowledged
     └──────────────────close──────────────────▶ closed

Example::

    check_transition("new", "close", classification="true_positive", reason="confirmed_misuse", comment="x")
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from ..errors import AgentgovError
from ..events import identity_key
from ..inert import UNSAFE, inert
from ..scoring.catalogue import CATALOGUE

FINDING_STATES = ("new", "acknowledged", "closed")
OPEN_STATES = ("new", "acknowledged")
ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    # action -> (states it may start from, state it leads to)
    "acknowledge": (("new",), "acknowledged"),
    "close": (("new", "acknowledged"), "closed"),
    "reopen": (("closed",), "acknowledged"),
}
CLASSIFICATIONS = ("true_positive", "benign_positive", "false_positive", "duplicate")
REASONS: dict[str, str] = {
    "confirmed_misuse": "Confirmed misuse or policy violation by the agent",
    "confirmed_misconfiguration": "Confirmed misconfiguration of the agent or its policy",
    "authorized_change": "Authorized change (ticket or approval found out of band)",
    "expected_behaviour": "Expected behaviour of the workflow",
    "test_activity": "Test or drill activity",
    "rule_too_broad": "Rule fired on activity it should not cover",
    "data_quality": "Bad or incomplete event data",
    "duplicate_of_other": "Already tracked in another finding",
}
REVIEW_SEVERITIES = ("critical", "high", "medium")
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}
ROLES = ("reviewer", "approver", "auditor")
EXCEPTION_ACTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "approve": (("requested",), "active"),
    "reject": (("requested",), "rejected"),
    "revoke": (("active",), "revoked"),
}
MAX_TEXT = 4000
MAX_ID = 256  # an id or a code typed into a form or an API body (the API's ``Name``)
MIN_YEAR, MAX_YEAR = 1970, 2299  # the store's DateTime64(3) ends in 2299; nothing here predates the epoch


def utc(value: datetime) -> datetime:
    """``value`` in UTC (naive means UTC), or a validation error (422) when out of range.

    Python raises OverflowError converting 0001-01-01T00:00:00+01:00 or 9999-12-31T23:59:59-01:00 to UTC, and
    the store cannot hold dates past 2299: without this check such a value was a 500."""
    try:
        out = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError as exc:
        raise ValueError("date-time out of range") from exc
    if not MIN_YEAR <= out.year <= MAX_YEAR:
        raise ValueError(f"date-time out of range (years {MIN_YEAR} to {MAX_YEAR})")
    return out


class ReviewError(AgentgovError):
    """A decision the state machine or the rules refuse (HTTP 400/403)."""

    status = 400


class Forbidden(ReviewError):
    status = 403


class Conflict(ReviewError):
    """The form was rendered from an older version of the subject (HTTP 409)."""

    status = 409


MAX_DIGITS = 18
"""Digits of a version, an item number or a count typed into a form or a path: 18 hold any of them (< 2**63)."""


def ascii_digits(value: str) -> bool:
    """Whether ``value`` is a whole number in at most :data:`MAX_DIGITS` ASCII digits. ``str.isdigit`` alone
    also accepts '²', which ``int`` refuses (a 500), and '٣', which ``int`` silently reads as 3; and ``int``
    refuses more than 4,300 digits with a ValueError (another 500), so the length is bounded here too."""
    return value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS


def whole_number(value: str, what: str) -> int:
    """``value`` as an int, or a :class:`ReviewError` (400) naming ``what``: the one reading of a number a user
    typed (:func:`ascii_digits`); the message quotes at most 40 characters of what was sent."""
    if not ascii_digits(value):
        raise ReviewError(f"{what} must be a whole number of at most {MAX_DIGITS} digits 0-9, got {value[:40]!r}")
    return int(value)


def finding_id(event_id: str, code: str) -> str:
    return f"{event_id}/{code}"


def split_finding_id(fid: str) -> tuple[str, str]:
    event_id, _, code = fid.rpartition("/")
    if not event_id or not code:
        raise ReviewError(f"not a finding id: {fid!r}")
    return event_id, code


def check_transition(state: str, action: str, *, classification: str | None = None, reason: str | None = None,
                     comment: str | None = None) -> str:
    """The state ``action`` leads to from ``state``; raises :class:`ReviewError` when not allowed."""
    if action not in ACTIONS:
        raise ReviewError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    sources, target = ACTIONS[action]
    if state not in sources:
        raise ReviewError(f"cannot {action} a finding that is {state}")
    if comment is not None and len(comment) > MAX_TEXT:
        raise ReviewError(f"comment longer than {MAX_TEXT} characters")
    if action == "close":
        if classification not in CLASSIFICATIONS:
            raise ReviewError(f"closing needs a classification: one of {', '.join(CLASSIFICATIONS)}")
        if reason not in REASONS:
            raise ReviewError(f"closing needs a reason from the list: {', '.join(REASONS)}")
        if not comment or not comment.strip():
            raise ReviewError("closing needs a comment")
    return target


def require_role(roles: tuple[str, ...], *allowed: str) -> None:
    if not set(roles) & set(allowed):
        raise Forbidden(f"needs the role {' or '.join(allowed)}; you have {', '.join(roles) or 'none'}")


def same_person(a: str, b: str) -> bool:
    """Two ids of one identity, as the pipeline matches identities (``events.identity_key``: case and Unicode
    form folded): ``Alice`` deciding about ``alice``'s access decides about her own."""
    return identity_key(a) == identity_key(b)


def check_not_own(actor_user: str, parties: set[str], what: str) -> None:
    """Separation of duties: nobody decides about their own access.

    ``parties`` are the people the subject is about: the identity that was granted access (target), the
    principal the agent acted for, and the person who approved the grant, in any spelling (:func:`same_person`).
    Four-eyes, as for exceptions: another reviewer decides."""
    if any(same_person(actor_user, p) for p in parties):
        raise Forbidden(f"separation of duties: {what} concerns your own access or your own approval; "
                        "another reviewer must decide it")


@dataclass(frozen=True)
class Actor:
    """An authenticated identity (from the proxy or a token; never from a form field)."""

    user: str
    roles: tuple[str, ...]
    # Which credential this request came with (a session's nonce, a token's digest; empty behind a proxy):
    # the CSRF token and logout are bound to it. Not part of the identity.
    session: str = field(default="", compare=False, repr=False)

    @property
    def read_only(self) -> bool:
        return not set(self.roles) & {"reviewer", "approver"}


DECISION_IDS = uuid.UUID("0b7e9c52-3f1d-5a8e-b6c4-2d9f7a1e4c30")
"""Namespace of the decisions' ids (uuid5, :func:`decision_id`)."""
REMEDIATION_IDS = uuid.UUID("5f0c4f3e-7a51-4b8e-9a2d-6c1d2f3a4b5c")
"""Namespace of the remediation requests' ids (uuid5 of the id of the decision that raised the request)."""


def decision_id(subject_kind: str, subject_id: str, version: int, kind: str, actor: str) -> str:
    """The id of a decision: the same for the same actor's same decision on the same version of a subject.

    The ``decisions`` table is a ReplacingMergeTree ordered by (subject, version, decision_id): a request
    retried after the app restarted (and forgot what it had published, :meth:`ReviewService.writing`)
    publishes the same id again, and the two rows fold into one instead of two decisions at one version."""
    name = "\x1f".join((subject_kind, subject_id, str(version), kind, actor))
    return str(uuid.uuid5(DECISION_IDS, name))


def remediation_id(decision_id: str) -> str:
    """The id of the remediation request a decision raises: a retried decision raises the same request, which
    a remediation system dedupes by ``request_id``."""
    return str(uuid.uuid5(REMEDIATION_IDS, decision_id))


def decision(kind: str, subject_kind: str, subject_id: str, version: int, actor: Actor, now_ms: int, *,
             from_state: str | None = None, to_state: str | None = None, classification: str | None = None,
             reason: str | None = None, comment: str | None = None,
             payload: dict[str, str] | None = None) -> dict[str, Any]:
    """A ``ReviewDecision`` record (schemas/review_decision.avsc), with its deterministic id (:func:`decision_id`)."""
    return {
        "decision_id": decision_id(subject_kind, subject_id, version, kind, actor.user), "kind": kind,
        "subject_kind": subject_kind, "subject_id": subject_id,
        "subject_version": version, "actor": actor.user, "actor_roles": list(actor.roles), "decided_at": now_ms,
        "from_state": from_state, "to_state": to_state, "classification": classification, "reason": reason,
        "comment": comment, "payload": {k: v for k, v in (payload or {}).items() if v is not None},
    }


# -- exceptions ----------------------------------------------------------------------------------
DAY_MS = 86_400_000


ExceptionStatus = Literal["requested", "active", "expired", "rejected", "revoked"]
EXCEPTION_STATUSES: tuple[str, ...] = get_args(ExceptionStatus)


def check_exception_status(status: str) -> None:
    """A filter on exception status: empty (any) or one of :data:`EXCEPTION_STATUSES`."""
    if status and status not in EXCEPTION_STATUSES:
        raise ReviewError(f"unknown exception status {status[:40]!r}; expected one of {', '.join(EXCEPTION_STATUSES)}")


def exception_status(record: dict[str, Any], now_ms: int) -> str:
    """requested, active, expired, rejected or revoked (expiry follows from the clock, not from a record)."""
    if record["state"] == "active" and record["expires_at"] <= now_ms:
        return "expired"
    return str(record["state"])


CROSS_RUN_PREFIX = "AG-XRN-"


def check_id(value: str, what: str) -> None:
    """An id a person typed (agent, workflow, target, entitlement, code): at most :data:`MAX_ID` characters and
    no control or invisible character (``pipeline.inert``), which no event's id carries, so a scope holding
    one would never match and would look like one that does (``agent-x`` and ``agent-x\u200b``)."""
    if len(value) > MAX_ID:
        raise ReviewError(f"{what} longer than {MAX_ID} characters")
    bad = UNSAFE.search(value)
    if bad:
        raise ReviewError(f"{what} contains a control or invisible character ({inert(bad[0])}); type the id as "
                          "events carry it")


def new_exception(actor: Actor, now_ms: int, *, code: str, agent_id: str, justification: str, expires_at_ms: int,
                  max_days: int, workflow_id: str | None = None, target_id: str | None = None,
                  entitlement: str | None = None) -> dict[str, Any]:
    """Version 1 of a requested exception. Raises :class:`ReviewError` on a bad scope or expiry.

    The one check of a request, whether it came from the page's form or the API's body."""
    require_role(actor.roles, "reviewer", "approver")
    for what, value in (("code", code), ("agent", agent_id), ("workflow", workflow_id), ("target", target_id),
                        ("entitlement", entitlement)):
        check_id(value or "", what)
    if not code.strip() or not agent_id.strip():
        raise ReviewError("an exception needs a finding code and an agent")
    if code.strip() not in CATALOGUE:
        raise ReviewError("unknown finding code (agentgov rules lists them)")
    if code.strip().startswith(CROSS_RUN_PREFIX):
        # Scorers apply exceptions to their findings; the correlator does not yet, so an exception for a
        # cross-run code would be accepted and never take effect. Refused instead of silently ignored.
        raise ReviewError("cross-run findings (AG-XRN-*) cannot be excepted: the correlator does not apply "
                          "exceptions; disposition each finding instead")
    if not justification.strip():
        raise ReviewError("an exception needs a justification")
    if len(justification) > MAX_TEXT:
        raise ReviewError(f"justification longer than {MAX_TEXT} characters")
    if expires_at_ms <= now_ms:
        raise ReviewError("the expiry must be in the future")
    if expires_at_ms > now_ms + max_days * DAY_MS:
        raise ReviewError(f"the expiry may be at most {max_days} days ahead (governance policy)")
    return {
        "exception_id": f"EXC-{uuid.uuid4().hex[:12]}", "version": 1, "state": "requested", "code": code.strip(),
        "agent_id": agent_id.strip(), "workflow_id": workflow_id or None, "target_id": target_id or None,
        "entitlement": entitlement or None, "justification": justification, "requester": actor.user,
        "approver": None, "requested_at": now_ms, "effective_at": None, "expires_at": expires_at_ms,
        "ended_at": None, "updated_by": actor.user, "updated_at": now_ms,
    }


def decide_exception(current: dict[str, Any], action: str, actor: Actor, now_ms: int, comment: str | None = None
                     ) -> dict[str, Any]:
    """The next version of an exception after ``action`` (approve, reject, revoke). Four-eyes enforced.

    Ending an exception (reject, revoke) needs a comment: the requester, and the auditor after them, must be
    able to read why a risk acceptance was refused or withdrawn. Approving one may carry a comment; the
    requester's justification is the approval's reason."""
    if action not in EXCEPTION_ACTIONS:
        raise ReviewError(f"unknown action {action!r}; expected one of {', '.join(EXCEPTION_ACTIONS)}")
    text = (comment or "").strip()
    if len(text) > MAX_TEXT:
        raise ReviewError(f"comment longer than {MAX_TEXT} characters")
    if action in ("reject", "revoke") and not text:
        raise ReviewError(f"{action} needs a comment saying why")
    sources, target = EXCEPTION_ACTIONS[action]
    status = exception_status(current, now_ms)
    if status not in sources:
        raise ReviewError(f"cannot {action} an exception that is {status}")
    if action in ("approve", "reject"):
        require_role(actor.roles, "approver")
        if same_person(actor.user, current["requester"]):
            raise Forbidden("four-eyes: the requester cannot approve or reject their own exception")
        if action == "approve" and any(same_person(actor.user, v) for v in (current.get("target_id"),
                                                                            current.get("agent_id")) if v):
            raise Forbidden("separation of duties: this exception would cover your own access; another "
                            "approver must decide it")
    else:
        require_role(actor.roles, "approver", "reviewer")
    nxt = dict(current, version=current["version"] + 1, state=target, updated_by=actor.user, updated_at=now_ms)
    if action == "approve":
        nxt.update(approver=actor.user, effective_at=now_ms)
    elif action == "reject":
        nxt.update(approver=actor.user, ended_at=now_ms)
    else:
        nxt.update(ended_at=now_ms)
    return nxt
