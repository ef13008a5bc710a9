"""Review state machine, exception rules, identity/CSRF and the scorer-side exception matching (no network)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.review.auth import Authenticator
from pipeline.review.model import (
    DAY_MS,
    Actor,
    Forbidden,
    ReviewError,
    check_transition,
    decide_exception,
    exception_status,
    new_exception,
)
from pipeline.risk_exceptions import ExceptionIndex, apply
from pipeline.scoring.engine import Scored
from pipeline.scoring.findings import Category, Finding, Severity
from pipeline.settings import Settings

NOW = 1_800_000_000_000
REVIEWER, RITA, BOB, AUDITOR = (Actor("alice", ("reviewer",)), Actor("rita", ("reviewer", "approver")),
                                Actor("bob", ("approver",)), Actor("audrey", ("auditor",)))
CLOSE = {"classification": "true_positive", "reason": "confirmed_misuse", "comment": "checked"}


@pytest.mark.parametrize(("state", "action", "kw", "to"), [
    ("new", "acknowledge", {}, "acknowledged"),
    ("new", "close", CLOSE, "closed"),
    ("acknowledged", "close", CLOSE, "closed"),
    ("closed", "reopen", {}, "acknowledged"),
])
def test_allowed_transitions(state: str, action: str, kw: dict[str, Any], to: str) -> None:
    assert check_transition(state, action, **kw) == to


@pytest.mark.parametrize(("state", "action", "kw"), [
    ("acknowledged", "acknowledge", {}),
    ("closed", "close", CLOSE),
    ("new", "reopen", {}),
    ("new", "delete", {}),
    ("new", "close", {**CLOSE, "classification": "maybe"}),
    ("new", "close", {**CLOSE, "reason": "free text reason"}),
    ("new", "close", {**CLOSE, "comment": "  "}),
    ("new", "close", {**CLOSE, "comment": "x" * 5000}),
])
def test_refused_transitions(state: str, action: str, kw: dict[str, Any]) -> None:
    with pytest.raises(ReviewError):
        check_transition(state, action, **kw)


def _exception(actor: Actor = RITA, days: float = 30, **kw: Any) -> dict[str, Any]:
    return new_exception(actor, NOW, code="AG-ESC-003", agent_id="agent-x", justification="known batch job",
                         expires_at_ms=int(NOW + days * DAY_MS), max_days=90, **kw)


def test_exception_expiry_is_required_future_and_capped() -> None:
    assert _exception(days=90)["state"] == "requested"
    with pytest.raises(ReviewError, match="at most 90 days"):
        _exception(days=91)
    with pytest.raises(ReviewError, match="future"):
        _exception(days=-1)
    with pytest.raises(Forbidden):
        _exception(actor=AUDITOR)


@pytest.mark.parametrize(("code", "message"), [
    ("AG-NOPE-001", "unknown finding code"),
    ("AG-XRN-001", "cannot be excepted"),  # the correlator does not apply exceptions: refused, not ignored
])
def test_exception_scope_must_name_a_code_an_exception_can_cover(code: str, message: str) -> None:
    with pytest.raises(ReviewError, match=message):
        new_exception(RITA, NOW, code=code, agent_id="agent-x", justification="j", expires_at_ms=NOW + DAY_MS,
                      max_days=90)


def test_four_eyes_and_lifecycle() -> None:
    requested = _exception()
    with pytest.raises(Forbidden, match="four-eyes"):
        decide_exception(requested, "approve", RITA, NOW + 1)
    with pytest.raises(Forbidden):
        decide_exception(requested, "approve", REVIEWER, NOW + 1)  # not an approver
    active = decide_exception(requested, "approve", BOB, NOW + 1)
    assert (active["state"], active["version"], active["approver"], active["effective_at"]) == ("active", 2, "bob",
                                                                                                NOW + 1)
    assert exception_status(active, NOW + 2) == "active"
    assert exception_status(active, active["expires_at"]) == "expired"  # lapses by itself
    with pytest.raises(ReviewError):
        decide_exception(active, "approve", BOB, NOW + 2)
    for action, current in (("revoke", active), ("reject", requested)):
        with pytest.raises(ReviewError, match=f"{action} needs a comment saying why"):
            decide_exception(current, action, BOB, NOW + 3)
    with pytest.raises(ReviewError, match="longer than 4000"):
        decide_exception(active, "revoke", REVIEWER, NOW + 3, "x" * 4001)
    revoked = decide_exception(active, "revoke", REVIEWER, NOW + 3, "no longer needed")
    assert (revoked["state"], revoked["version"], revoked["ended_at"]) == ("revoked", 3, NOW + 3)


def test_nobody_approves_an_exception_covering_their_own_access_in_any_spelling() -> None:
    with pytest.raises(Forbidden, match="four-eyes"):
        decide_exception(_exception(), "approve", Actor("RITA", ("approver",)), NOW + 1)  # the requester
    with pytest.raises(Forbidden, match="your own access"):
        decide_exception(_exception(target_id="Bob"), "approve", BOB, NOW + 1)  # scoped to bob's access
    assert decide_exception(_exception(target_id="carol"), "approve", BOB, NOW + 1)["state"] == "active"


@pytest.mark.parametrize("party", ["alice", "Alice", "ALICE"])
def test_a_finding_about_ones_own_access_is_refused_in_any_spelling(party: str) -> None:
    from pipeline.review.model import check_not_own

    with pytest.raises(Forbidden, match="separation of duties"):
        check_not_own("alice", {"u-9", party}, "finding f")
    check_not_own("alice", {"u-9", "bob"}, "finding f")


def _finding(code: str = "AG-ESC-003") -> Finding:
    return Finding(code, Severity.critical, Category.escalation, "m", (), ())


def _event(occurred_at: int, agent: str = "agent-x", workflow: str = "wf", target: str = "u1",
           entitlement: str | None = "aws-admin", on_behalf_of: str | None = None,
           approved_by: str | None = None) -> Any:
    return {"occurred_at": occurred_at, "agent": {"agent_id": agent, "on_behalf_of": on_behalf_of},
            "workflow_id": workflow, "target": {"identity_id": target}, "resource": {"entitlement": entitlement},
            "decision": {"approved_by": approved_by}}


def test_apply_marks_by_event_time_scope_and_version() -> None:
    active = decide_exception(_exception(workflow_id="wf"), "approve", BOB, NOW)
    index = ExceptionIndex().with_record(_exception()).with_record(active)
    scored = Scored((_finding(), _finding("AG-AUTH-001")), 100, "critical")
    marked = apply(scored, _event(NOW + 10), index)
    assert [(f.exception_id, f.exception_version) for f in marked.findings] == [(active["exception_id"], 2),
                                                                                (None, None)]
    assert apply(scored, _event(NOW - 1), index).findings[0].exception_id is None  # before approval
    assert apply(scored, _event(active["expires_at"]), index).findings[0].exception_id is None  # expired
    assert apply(scored, _event(NOW + 10, agent="other"), index).findings[0].exception_id is None
    assert apply(scored, _event(NOW + 10, workflow="other"), index).findings[0].exception_id is None
    # Stamped inside the window but sent after it ended: the agent's own time does not revive an exception.
    end = active["expires_at"]
    assert apply(scored, _event(NOW + 10), index, log_ms=NOW + 20).findings[0].exception_id == active["exception_id"]
    assert apply(scored, _event(end - 1), index, log_ms=end + 60_000).findings[0].exception_id is not None  # skew
    assert apply(scored, _event(NOW + 10), index, log_ms=end + 3_600_000).findings[0].exception_id is None
    # An older version arriving late changes nothing (compaction/redelivery order).
    requested_again = dict(active, version=1, state="requested")
    assert index.with_record(requested_again) is index
    revoked = decide_exception(active, "revoke", BOB, NOW + 20, "job finished")
    later = index.with_record(revoked)
    assert apply(scored, _event(NOW + 10), later).findings[0].exception_version == 3  # inside [approved, revoked)
    assert apply(scored, _event(NOW + 30), later).findings[0].exception_id is None


@pytest.mark.parametrize(("about", "covered"), [
    ({"target": "dave"}, True),
    ({"target": "bob"}, False),  # the approver's own access
    ({"target": "\uff22\uff4f\uff42"}, False),  # in any spelling (full-width)
    ({"target": "rita"}, False),  # the requester's
    ({"target": "dave", "on_behalf_of": "BOB"}, False),  # the agent acted for the approver
    ({"target": "dave", "approved_by": "rita"}, False),  # a grant the requester approved
    ({"target": "dave", "on_behalf_of": "svc-iga", "approved_by": "erin"}, True),
])
def test_an_exception_never_covers_its_requesters_or_approvers_own_access(about: dict[str, str],
                                                                          covered: bool) -> None:
    # Scoped without a target, the approval is allowed (it names nobody); what it covers leaves them out.
    active = decide_exception(_exception(), "approve", BOB, NOW)
    index = ExceptionIndex().with_record(active)
    scored = Scored((_finding(),), 100, "critical")
    marked = apply(scored, _event(NOW + 10, **about), index).findings[0]
    assert (marked.exception_id is not None) is covered


def _auth(**kw: Any) -> Authenticator:
    base: dict[str, Any] = {"review_tokens": {"alice": SecretStr("t-alice")}, "review_users": {"alice": ["reviewer"]}}
    base.update(kw)
    return Authenticator(Settings.load(**base))


def test_token_session_and_csrf() -> None:
    auth = _auth()
    alice = auth.identify(None, {"authorization": "Bearer t-alice"}, {})
    assert alice == Actor("alice", ("reviewer",))
    assert auth.identify(None, {"authorization": "Bearer wrong"}, {}) is None
    cookie = auth.session_cookie(alice)
    assert auth.identify(None, {}, {"agentgov_session": cookie}) == alice
    forged = "bWFsbG9yeQ==." + cookie.split(".")[1]  # mallory with alice's signature
    assert auth.identify(None, {}, {"agentgov_session": forged}) is None
    assert auth.csrf_ok(alice, auth.csrf_token(alice))
    assert not auth.csrf_ok(alice, None) and not auth.csrf_ok(alice, "x")
    assert not auth.csrf_ok(Actor("bob", ()), auth.csrf_token(alice))


def test_proxy_headers_only_from_trusted_addresses() -> None:
    auth = _auth(review_auth="proxy", review_trusted_proxies=["10.0.0.0/8"])
    headers = {"x-forwarded-user": "rita", "x-forwarded-groups": "agentgov-reviewers, agentgov-approvers, other"}
    assert auth.identify("10.1.2.3", headers, {}) == Actor("rita", ("reviewer", "approver"))
    assert auth.identify("192.168.1.1", headers, {}) is None
    assert auth.identify("10.1.2.3", {"authorization": "Bearer t-alice"}, {}) is None  # no tokens in proxy mode


@pytest.mark.parametrize(("field", "value", "error"), [
    ("agent_id", "a" * 300_000, "agent longer than 256"),
    ("agent_id", "agent-\u202egpj.exe", r"agent contains a control or invisible character \(\\u202e\)"),
    ("agent_id", "agent-x\u200b", "agent contains"),
    ("workflow_id", "w" * 257, "workflow longer than 256"),
    ("target_id", "u-1\x00", r"target contains a control or invisible character \(\\x00\)"),
    ("entitlement", "crm\n", "entitlement contains"),
], ids=["long-agent", "rlo-agent", "zwsp-agent", "long-workflow", "nul-target", "newline-entitlement"])
def test_an_exception_scope_holds_only_ids_an_event_can_carry(field: str, value: str, error: str) -> None:
    scope: dict[str, Any] = {"code": "AG-ESC-003", "agent_id": "agent-x", field: value}
    with pytest.raises(ReviewError, match=error):
        new_exception(RITA, NOW, justification="j", expires_at_ms=NOW + DAY_MS, max_days=90, **scope)
