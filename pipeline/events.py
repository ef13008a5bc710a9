"""The agent transition event: pydantic models for the edges (SDK, CLI, JSON form), the canonical hash,
and the fast value checks the consumer runs on decoded records.

On the hot path events stay plain ``dict`` (see :class:`TransitionDict`); pydantic runs only where
events enter the system from code or JSON.

Example::

    ev = AgentTransition.model_validate(json_doc)      # raises pydantic.ValidationError naming the field
    record = ev.to_avro()                              # dict ready for the serde
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import translate
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ValidationError
from .limits import (
    ATTRIBUTE_KEY_MAX_CHARS,
    ATTRIBUTE_VALUE_MAX_CHARS,
    ATTRIBUTES_MAX,
    IDENT_MAX_CHARS,
    INPUTS_MAX,
    STEP_MAX,
    TIER_MAX,
    Limits,
    check_record,
)


class TriggerKind(StrEnum):
    joiner = "joiner"
    mover = "mover"
    leaver = "leaver"
    access_request = "access_request"
    scheduled = "scheduled"
    signal = "signal"
    manual = "manual"


class Action(StrEnum):
    create_account = "create_account"
    disable_account = "disable_account"
    delete_account = "delete_account"
    assign_role = "assign_role"
    remove_role = "remove_role"
    grant_entitlement = "grant_entitlement"
    revoke_entitlement = "revoke_entitlement"
    add_group_member = "add_group_member"
    remove_group_member = "remove_group_member"
    create_group = "create_group"
    modify_policy = "modify_policy"
    issue_credential = "issue_credential"
    allow_auth = "allow_auth"
    step_up_auth = "step_up_auth"
    deny_auth = "deny_auth"
    recommend = "recommend"


class IdentityType(StrEnum):
    human = "human"
    service = "service"
    agent = "agent"


class LifecycleState(StrEnum):
    pre_hire = "pre_hire"
    active = "active"
    on_leave = "on_leave"
    terminated = "terminated"
    unknown = "unknown"


class Outcome(StrEnum):
    granted = "granted"
    denied = "denied"
    recommended = "recommended"
    escalated = "escalated"


class Authority(StrEnum):
    policy_engine = "policy_engine"
    human = "human"
    model = "model"
    rule = "rule"


class Recommender(StrEnum):
    model = "model"
    rule = "rule"
    human = "human"


# Actions that change who can access what. Rules about approvals and evidence apply to these.
ACCESS_CHANGES = frozenset(
    {
        Action.create_account, Action.assign_role, Action.grant_entitlement, Action.add_group_member,
        Action.create_group, Action.modify_policy, Action.issue_credential, Action.allow_auth,
        Action.disable_account, Action.delete_account, Action.remove_role, Action.revoke_entitlement,
        Action.remove_group_member,
    }
)
# Actions that add access (the ones that can escalate).
GRANTS = frozenset(
    {
        Action.create_account, Action.assign_role, Action.grant_entitlement, Action.add_group_member,
        Action.issue_credential, Action.allow_auth, Action.modify_policy,
    }
)
REVOKES = frozenset(
    {Action.disable_account, Action.delete_account, Action.remove_role, Action.revoke_entitlement,
     Action.remove_group_member}
)
# The grants and revokes of one named access (role, entitlement, group membership; see access_name), as
# opposed to account-wide changes: what an identity holds is replayed from these.
ENTITLEMENT_GRANTS = frozenset({Action.assign_role, Action.grant_entitlement, Action.add_group_member})
ENTITLEMENT_REVOKES = frozenset({Action.remove_role, Action.revoke_entitlement, Action.remove_group_member})
# Account-wide revokes: whatever they name (the account, e.g. "user-account"), they end every access the
# identity holds on that system.
ACCOUNT_REVOKES = frozenset({Action.disable_account, Action.delete_account})

Ident = Annotated[str, Field(min_length=1, max_length=IDENT_MAX_CHARS)]
DEFAULT_LIMITS = Limits()

# Characters that show nothing: every whitespace character (str.isspace: space, NBSP, the U+2000 spaces,
# ideographic space...), C0/C1 controls, and the invisible format and filler characters (zero-width space,
# joiners, directional marks and isolates, word joiner, BOM, soft hyphen, Hangul and braille blanks,
# variation selectors, tag characters). A fixed list, so every replica and Python version agrees.
INVISIBLE = "".join(
    [chr(c) for c in range(0x3001) if chr(c).isspace()]
    + [chr(c) for c in (*range(0x00, 0x20), *range(0x7f, 0xa0))]
    + [chr(c) for c in (0x00ad, 0x034f, 0x061c, 0x115f, 0x1160, 0x17b4, 0x17b5, 0x180e, 0x2800, 0x3164,
                        0xfeff, 0xffa0, *range(0x200b, 0x2010), *range(0x202a, 0x202f),
                        *range(0x2060, 0x2065), *range(0x2066, 0x2070), *range(0xfe00, 0xfe10),
                        *range(0xe0000, 0xe0080))]
)


def _char_class(chars: str) -> str:
    """A regex character class of ``chars`` written as ranges: a class of single characters this size made
    ``re`` about ten times slower, and check_values runs on every consumed event."""
    ranges: list[list[int]] = []
    for c in sorted({ord(c) for c in chars}):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "[" + "".join(re.escape(chr(lo)) + ("" if lo == hi else "-" + re.escape(chr(hi)))
                         for lo, hi in ranges) + "]"


# An identifier (run, workflow, agent, principal, target, system, resource, entitlement, approver, input name)
# may carry no INVISIBLE character, nor a space at either end: ``"u-step\u200b"`` or ``"u-step "`` looks like
# ``"u-step"`` and would be another identity, key and partition to every rule (``name_key`` folds such
# spellings only where names are compared). A plain space may stand between words ("Domain Admins").
_HIDDEN_IN_ID = re.compile(_char_class(INVISIBLE.replace(" ", "")) + "|\\A | \\Z")


def _not_an_id(value: str) -> bool:
    """``value`` is empty or holds what :data:`_HIDDEN_IN_ID` refuses (printable ASCII, most ids, is checked
    for its ends only)."""
    if not value:
        return True
    if value.isascii() and value.isprintable():
        return value[0] == " " or value[-1] == " "
    return _HIDDEN_IN_ID.search(value) is not None


def _escaped(value: str) -> str:
    """``value`` with every invisible character written as its escape: shown, never obeyed or hidden."""
    return "".join(c if c == " " or c not in INVISIBLE else
                   f"\\x{ord(c):02x}" if ord(c) < 0x100 else
                   f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in value)


def _id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identifier (empty, or an invisible character in it or a space at an end,
    named by its code point, never echoed), or None when it can."""
    if not value:
        return "is empty"
    m = _HIDDEN_IN_ID.search(value)
    if m is None:
        return None
    c = m[0]
    where = ("at its start" if m.start() == 0 else "at its end" if m.end() == len(value)
             else f"at character {m.start() + 1} of {len(value)}")
    name = unicodedata.name(c, "(a control character)" if unicodedata.category(c) == "Cc" else "(unnamed)")
    shown = _escaped(value[:64]) + ("\u2026" if len(value) > 64 else "")
    return (f"holds U+{ord(c):04X} {name} {where} ('{shown}'): an identifier may carry no control or "
            "invisible character, nor a space at either end")


def is_blank(value: str | None) -> bool:
    """``value`` names nothing: None, empty, or only whitespace and invisible characters (:data:`INVISIBLE`).
    An ``approved_by`` or ``trigger.ref`` like that is missing, whatever its length."""
    return value is None or not value.strip(INVISIBLE)


def identity_key(value: str) -> str:
    """The form in which an identity (an agent, a principal, a target) is matched across events: NFKC, Unicode
    case-folded, NFKC again (Unicode's NFKC_Casefold, as identifier comparison uses it). Directories and clouds
    treat their ids as case-insensitive (Entra ID and Okta log-ins, AWS IAM and Google names), so ``Alice@corp``
    and ``alice@corp`` are one entity; and one name sent composed (``José``, U+00E9) or decomposed (``e`` and
    U+0301), or in compatibility forms (full-width letters), is one entity too: keyed apart, a climb split over
    the spellings would never meet in one key. Look-alikes from other scripts (Cyrillic U+0430 for ``a``) are not
    folded. Events keep the id as sent; only keys and comparisons use this. Ids carry no invisible character
    nor a space at either end (:func:`check_values`), so no trim. ASCII, the usual id, is only lower-cased."""
    if value.isascii():
        return value.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


def identity_pattern(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex for fnmatch patterns of identities (``agent-jml-*``): its ``match`` of an
    :func:`identity_key` answers ``fnmatchcase(identity_key(id), identity_key(p))`` for any ``p``
    (``translate`` anchors each pattern at its end, ``match`` at its start). A policy's workflow agents
    (AG-BND-005) and the agents of the signing-key bindings (delegation edges) are matched so."""
    return re.compile("|".join(f"(?:{translate(identity_key(p))})" for p in patterns))


def name_key(value: str) -> str:
    """The form in which names are compared where the target systems compare them case-insensitively
    (privileged names, separation-of-duties pairs, approvers against the identities of the event): leading
    and trailing whitespace and invisible characters trimmed, then folded as :func:`identity_key` folds (NFKC,
    case-folded, NFKC). Until session 26 only case-folded: an approver named as the target in decomposed
    form (``jose\u0301.garcia`` for ``josé.garcia``) or the agent in full-width letters was someone else, an
    independent human approval that exempted every escalation pattern, while the same spellings were one
    identity to every key and rule (red team, session 26)."""
    value = value.strip(INVISIBLE)
    if value.isascii():
        return value.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class Agent(_Model):
    agent_id: Ident
    agent_version: Ident
    on_behalf_of: Ident | None = None
    model_id: Ident | None = None


class Trigger(_Model):
    kind: TriggerKind
    ref: Ident | None = None


class Target(_Model):
    identity_id: Ident
    identity_type: IdentityType
    lifecycle_state: LifecycleState


class Resource(_Model):
    system: Ident
    resource_id: Ident
    entitlement: Ident | None = None
    privilege_tier: int = Field(ge=0, le=TIER_MAX)


class InputUsed(_Model):
    name: Ident
    source: Ident


class Decision(_Model):
    outcome: Outcome
    authority: Authority
    recommended_by: Recommender | None = None
    approved_by: Ident | None = None
    approval_ref: Ident | None = None


class PolicyRef(_Model):
    policy_id: Ident
    policy_version: Ident
    decision_id: Ident | None = None


class Evidence(_Model):
    event_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    prev_event_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    signature: str | None = Field(default=None, max_length=IDENT_MAX_CHARS)
    key_id: str | None = Field(default=None, max_length=IDENT_MAX_CHARS)


class AgentTransition(_Model):
    """One transition, in the documented JSON form. ``event_id``, ``occurred_at`` and ``evidence`` may be
    left out of a draft; :class:`pipeline.publisher.TransitionPublisher` fills them in."""

    event_id: uuid.UUID | None = None
    occurred_at: datetime | None = None
    workflow_id: Ident
    workflow_version: Ident
    run_id: Ident
    step: int = Field(ge=0, le=STEP_MAX)
    from_state: Ident
    to_state: Ident
    agent: Agent
    trigger: Trigger
    action: Action
    target: Target
    resource: Resource
    inputs_used: list[InputUsed] = Field(default_factory=list, max_length=INPUTS_MAX)
    decision: Decision
    policy: PolicyRef
    evidence: Evidence | None = None
    attributes: dict[str, str] = Field(default_factory=dict, max_length=ATTRIBUTES_MAX)
    tenant: Ident | None = None

    @field_validator("attributes")
    @classmethod
    def _attribute_sizes(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if len(key) > ATTRIBUTE_KEY_MAX_CHARS:
                raise ValueError(f"attribute key of {len(key)} characters, over {ATTRIBUTE_KEY_MAX_CHARS}")
            if len(value) > ATTRIBUTE_VALUE_MAX_CHARS:
                raise ValueError(f"attribute value of {len(value)} characters, over {ATTRIBUTE_VALUE_MAX_CHARS}")
        return v

    @field_validator("occurred_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("occurred_at must carry a timezone (ISO-8601 with Z or +00:00)")
        return v.astimezone(UTC) if v is not None else None

    def to_avro(self) -> TransitionDict:
        """The Avro record dict (timestamp as int millis). Requires event_id, occurred_at and evidence."""
        if self.event_id is None or self.occurred_at is None or self.evidence is None:
            raise ValueError("event_id, occurred_at and evidence must be set before encoding")
        doc = self.model_dump(mode="json")
        doc["occurred_at"] = int(self.occurred_at.timestamp() * 1000)
        doc["evidence"].setdefault("signature", None)
        return doc


TransitionDict = dict[str, Any]
"""A decoded transition: the Avro record as a plain dict, ``occurred_at`` in epoch millis."""

_HASH_EXCLUDED = ("event_hash", "signature", "key_id")


def _drop_nulls(node: Any) -> Any:
    # Runs on every scored event: recurse only into containers, never call per scalar.
    if type(node) is dict:
        return {k: (_drop_nulls(v) if type(v) in _CONTAINERS else v) for k, v in node.items() if v is not None}
    if type(node) is list:
        return [_drop_nulls(v) if type(v) in _CONTAINERS else v for v in node]
    return node


_CONTAINERS = (dict, list)


def canonical_bytes(record: TransitionDict) -> bytes:
    """Canonical content of an event: JSON with sorted keys, no whitespace, nulls dropped, timestamps
    as epoch millis, and ``evidence.event_hash``/``signature``/``key_id`` left out. ``prev_event_hash`` is
    inside, so the hashes of a run form a chain. Dropping nulls keeps the hash stable across schema
    versions that add optional fields."""
    doc = dict(record)
    evidence = {k: v for k, v in (doc.get("evidence") or {}).items() if k not in _HASH_EXCLUDED}
    doc["evidence"] = evidence
    occurred = doc.get("occurred_at")
    if isinstance(occurred, datetime):
        doc["occurred_at"] = int(occurred.timestamp() * 1000)
    # orjson's compact, key-sorted UTF-8 output is byte-identical to
    # json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False) (tests/unit/test_events_canonical.py)
    return orjson.dumps(_drop_nulls(doc), option=orjson.OPT_SORT_KEYS)


def event_hash(record: TransitionDict) -> str:
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def sign(record: TransitionDict, key: bytes) -> str:
    """HMAC-SHA256 over the canonical content, hex."""
    return hmac.new(key, canonical_bytes(record), hashlib.sha256).hexdigest()


_ID_FIELDS = (
    ("run_id",), ("workflow_id",), ("agent", "agent_id"), ("target", "identity_id"),
    ("resource", "system"), ("resource", "resource_id"), ("resource", "entitlement"),
    ("agent", "on_behalf_of"), ("decision", "approved_by"),
)


def check_values(record: TransitionDict, *, now_ms: int, max_future_ms: int | None = None,
                 limits: Limits | None = None) -> None:
    """Value checks the Avro schema cannot express. Raises :class:`ValidationError` naming the field.

    The bounds (integers, lengths, sizes, the ``occurred_at`` window) come from :mod:`pipeline.limits`;
    ``max_future_ms`` overrides the future skew of ``limits``. Cheap by design: it runs on every
    consumed event."""
    if limits is None:
        limits = DEFAULT_LIMITS
    if max_future_ms is not None and max_future_ms != limits.max_future_ms:
        limits = Limits(limits.message_bytes, max_future_ms, limits.max_age_ms)
    check_record(record, limits, now_ms)
    event_id = record["event_id"]
    if len(event_id) != 36:
        raise ValidationError(f"event_id={event_id[:64]!r} is not a UUID", reason="invalid_value", field="event_id")
    try:
        canonical = str(uuid.UUID(event_id))
    except ValueError:
        raise ValidationError(f"event_id={event_id!r} is not a UUID", reason="invalid_value",
                              field="event_id") from None
    if canonical != event_id:  # one spelling per id, so a variant cannot dodge duplicate detection
        raise ValidationError(f"event_id={event_id!r} is not in canonical form {canonical!r}",
                              reason="invalid_value", field="event_id")
    for path in _ID_FIELDS:
        value: Any = record
        for part in path:
            value = value[part]
        if value is not None and _not_an_id(value):
            dotted = ".".join(path)
            raise ValidationError(f"{dotted} {_id_problem(value)}", reason="invalid_value", field=dotted)
    # An input name is an identifier too: it is matched against, and proposed into, the policy's allowlists
    # (a newline there is never a real attribute, and only makes the name read as something else).
    for item in record["inputs_used"]:
        name = item["name"]
        if _not_an_id(name):
            raise ValidationError(f"inputs_used.name {_id_problem(name)}", reason="invalid_value",
                                  field="inputs_used.name")
