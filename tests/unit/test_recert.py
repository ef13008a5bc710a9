"""Recertification rules as tables: recommendation with reasons, item decisions, bulk, sign-off, no auto-apply;
the proposed policy diff of an input-attribute review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.errors import ConfigError
from pipeline.review import policy_diff
from pipeline.review.attributes import attribute_rows
from pipeline.review.model import Actor, Forbidden, ReviewError
from pipeline.review.policy_diff import check_text, propose, satisfies
from pipeline.review.recert import (
    Evidence,
    Scope,
    check_bulk,
    check_item_decision,
    check_new_campaign,
    check_signoff,
    progress,
    recommend,
)
from pipeline.scoring.policy import default_policy_path, parse_policy

ALICE = Actor("alice", ("reviewer",))
DAY = 86_400_000
OK: dict[str, Any] = {"policy_approved": True, "approved_by": "mgr-eng", "policy_ref": "iga@7"}

RECOMMEND_CASES = [
    # (evidence, recommendation, reasons that must appear)
    (Evidence(findings=(("AG-AUTH-001", "critical", "grant"),), **OK), "revoke",
     ["critical finding AG-AUTH-001 on the grant"]),
    (Evidence(findings=(("AG-ESC-003", "high", "run"),), **OK), "revoke", ["high finding AG-ESC-003 on its run"]),
    (Evidence(identity_left=True, left_how="disable_account at 2026-11-01 10:00 UTC", **OK), "revoke",
     ["identity has left since (disable_account at 2026-11-01 10:00 UTC)"]),
    (Evidence(findings=(("AG-AUTH-001", "critical", "grant"),), identity_left=True, **OK), "revoke",
     ["critical finding AG-AUTH-001 on the grant", "identity has left since (account disabled or deleted)"]),
    (Evidence(**OK), "certify", ["approved policy version iga@7", "no finding on the grant or its run",
                                 "human-approved by mgr-eng"]),
    (Evidence(findings=(("AG-BND-001", "medium", "grant"),), **OK), "none", ["medium finding AG-BND-001 on the grant"]),
    (Evidence(policy_approved=True, approved_by=None, policy_ref="iga@7"), "none", ["no human approval recorded"]),
    (Evidence(policy_approved=False, approved_by="m", policy_ref="iga@5"), "none",
     ["policy version iga@5 is not approved"]),
    (Evidence(policy_approved=None, approved_by="m"), "none",
     ["policy version unknown or no approved versions configured"]),
    (Evidence(findings=(("AG-DRF-001", "low", "run"),), policy_approved=False, approved_by=None), "none",
     ["low finding AG-DRF-001 on its run", "policy version ? is not approved", "no human approval recorded"]),
]


@pytest.mark.parametrize(("evidence", "expected", "reasons"), RECOMMEND_CASES)
def test_recommendation_with_reasons(evidence: Evidence, expected: str, reasons: list[str]) -> None:
    rec, why = recommend(evidence)
    assert rec == expected
    assert why == reasons


def _decide(**kw: object) -> str:
    base: dict[str, object] = dict(state="pending", assignee="alice", owner="alice", campaign_state="open",
                                   action="certify", justification="still needed", certify_needs_justification=True)
    base.update(kw)
    actor = base.pop("actor", ALICE)
    return check_item_decision(actor, **base)  # type: ignore[arg-type]


DECISION_CASES = [
    ({}, "certified"),
    ({"action": "revoke"}, "revoked"),
    ({"action": "revoke", "end_ms": 2_000, "now_ms": 1_000}, "revoked"),
    ({"action": "revoke", "end_ms": 5 * DAY + 90 * DAY, "now_ms": 1_000, "due_at_ms": 5 * DAY}, "revoked"),
    ({"action": "reassign", "reassign_to": "rita"}, "pending"),
    ({"action": "reassign", "reassign_to": "rita", "target": "alice"}, "pending"),  # the way out of one's own
    ({"action": "reassign", "reassign_to": "rita", "approved_by": "alice"}, "pending"),  # and of one's approval
    ({"approved_by": "mgr-eng"}, "certified"),
    ({"target": "rita"}, "certified"),
    ({"action": "certify", "justification": "", "certify_needs_justification": False}, "certified"),
    ({"actor": Actor("rita", ("reviewer",)), "assignee": "rita"}, "certified"),
]
REFUSED_CASES = [
    ({"justification": ""}, ReviewError, "certify needs a justification"),
    ({"action": "revoke", "justification": " "}, ReviewError, "revoke needs a justification"),
    ({"action": "reassign", "reassign_to": ""}, ReviewError, "reassign needs the reviewer"),
    ({"action": "reassign", "reassign_to": "alice"}, ReviewError, "already assigned"),
    ({"action": "revoke", "end_ms": 500, "now_ms": 1_000}, ReviewError, "end date"),
    ({"action": "revoke", "end_ms": 5 * DAY + 90 * DAY + 1, "now_ms": 1_000, "due_at_ms": 5 * DAY}, ReviewError,
     "at most 90 days after the campaign's due date"),
    ({"action": "revoke", "end_ms": 253_402_343_999_000, "now_ms": 1_000, "due_at_ms": 5 * DAY}, ReviewError,
     "at most 90 days"),
    ({"state": "certified"}, ReviewError, "already certified"),
    ({"target": "alice"}, Forbidden, "separation of duties: this item is access you hold"),
    ({"target": "ALICE"}, Forbidden, "separation of duties: this item is access you hold"),  # any spelling
    ({"action": "revoke", "target": "alice"}, Forbidden, "separation of duties"),
    ({"approved_by": "alice"}, Forbidden, "separation of duties: you approved this grant"),
    ({"approved_by": "Alice"}, Forbidden, "you approved this grant"),  # any spelling
    ({"action": "revoke", "approved_by": "alice"}, Forbidden, "you approved this grant"),
    ({"campaign_state": "closed"}, ReviewError, "signed off"),
    ({"action": "delete"}, ReviewError, "unknown action"),
    ({"actor": Actor("rita", ("reviewer",))}, Forbidden, "assigned to alice"),
    ({"actor": Actor("audrey", ("auditor",))}, Forbidden, "needs the role"),
]


@pytest.mark.parametrize(("kw", "state"), DECISION_CASES)
def test_item_decisions(kw: dict[str, object], state: str) -> None:
    assert _decide(**kw) == state


@pytest.mark.parametrize(("kw", "error", "message"), REFUSED_CASES)
def test_item_decisions_refused(kw: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        _decide(**kw)


def test_bulk_only_on_one_recommendation() -> None:
    assert check_bulk({"a": "certify", "b": "certify"}) == "certify"
    with pytest.raises(ReviewError, match="sharing one recommendation; selected: certify, revoke"):
        check_bulk({"a": "certify", "b": "revoke"})
    with pytest.raises(ReviewError, match="nothing selected"):
        check_bulk({})
    # certifying in bulk only what the evidence recommends certifying; revoking in bulk stays open
    assert check_bulk({"a": "certify", "b": "certify"}, "certify") == "certify"
    for rec in ("revoke", "none"):
        with pytest.raises(ReviewError, match=f"recommended '{rec}' are certified one by one"):
            check_bulk({"a": rec, "b": rec}, "certify")
        assert check_bulk({"a": rec, "b": rec}, "revoke") == rec


def test_signoff_needs_every_item_decided_the_owner_and_an_attestation() -> None:
    check_signoff(ALICE, owner="alice", campaign_state="open", pending=0, comment="all reviewed")
    check_signoff(Actor("bob", ("approver",)), owner="alice", campaign_state="open", pending=0, comment="ok")
    for blank in (None, "", " \n\t"):
        with pytest.raises(ReviewError, match="sign-off needs an attestation comment"):
            check_signoff(ALICE, owner="alice", campaign_state="open", pending=0, comment=blank)
    with pytest.raises(ReviewError, match="longer than 4000"):
        check_signoff(ALICE, owner="alice", campaign_state="open", pending=0, comment="x" * 4001)
    with pytest.raises(ReviewError, match="2 items are still pending"):
        check_signoff(ALICE, owner="alice", campaign_state="open", pending=2, comment="c")
    with pytest.raises(Forbidden, match="only the owner"):
        check_signoff(Actor("rita", ("reviewer",)), owner="alice", campaign_state="open", pending=0, comment="c")
    with pytest.raises(Forbidden, match="separation of duties: the campaign reviews access you hold"):
        check_signoff(ALICE, owner="alice", campaign_state="open", pending=0, comment="c", holds_access=True)
    with pytest.raises(ReviewError, match="already signed off"):
        check_signoff(ALICE, owner="alice", campaign_state="closed", pending=0, comment="c")


@pytest.mark.parametrize("on_timeout", ["revoke", "certify", "apply_recommendation"])
def test_auto_apply_on_timeout_is_refused(on_timeout: str) -> None:
    with pytest.raises(ReviewError, match="revokes everything nobody looked at"):
        check_new_campaign(ALICE, name="q4", owner="alice", due_at_ms=2_000, now_ms=1_000, on_timeout=on_timeout)
    check_new_campaign(ALICE, name="q4", owner="alice", due_at_ms=2_000, now_ms=1_000)


def test_policy_refuses_a_timeout_action() -> None:
    text = default_policy_path().read_text().replace("campaign_on_timeout: none", "campaign_on_timeout: revoke", 1)
    assert "campaign_on_timeout: revoke" in text
    with pytest.raises(ConfigError, match=r"campaign_on_timeout: .*revokes everything nobody looked at"):
        parse_policy(text)


def test_scope_checks_and_progress() -> None:
    assert Scope(min_tier=2, agent="a").check().describe() == "held access granted by agents, tier >= 2, agent a"
    with pytest.raises(ReviewError, match="min_tier"):
        Scope(min_tier=5).check()
    with pytest.raises(ReviewError, match="within_days"):
        Scope(within_days=0).check()
    assert progress({"pending": 1, "certified": 2, "revoked": 1}) == {
        "total": 4, "decided": 3, "pending": 1, "certified": 2, "revoked": 1, "percent": 75.0}


# -- input-attribute review ---------------------------------------------------------------------------
POLICY = default_policy_path().read_text()
WF = "jml-provisioning"
USAGE = {"department": {"add_group_member", "disable_account"}, "job_code": {"add_group_member"},
         "credit_score": {"add_group_member"}, "location": {"grant_entitlement"}}

DIFF_CASES = [
    # (decisions, lines the diff removes, lines it adds)
    ({"location": "disallow"},
     ["    default_inputs: [department, job_code, manager, location, cost_center, employment_type]"],
     ["    default_inputs: [department, job_code, manager, cost_center, employment_type]"]),
    ({"credit_score": "approve"}, [],
     ["    default_inputs: [department, job_code, manager, location, cost_center, employment_type, credit_score]"]),
    ({"department": "disallow"},
     ["      disable_account: [department, job_code, manager, termination_date, employment_status]"],
     ["      disable_account: [job_code, manager, termination_date, employment_status]",
      "    default_inputs: [job_code, manager, location, cost_center, employment_type]"]),
    ({"credit_score": "disallow"}, [], []),  # already outside the allowlist: nothing to change
]


@pytest.mark.parametrize(("decisions", "removed", "added"), DIFF_CASES)
def test_proposed_policy_diff(decisions: dict[str, str], removed: list[str], added: list[str]) -> None:
    new_text, diff, notes = propose(POLICY, WF, decisions, USAGE, "ARV-0123")
    minus = {line[1:] for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")}
    plus = {line[1:] for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")}
    assert set(removed) <= minus and set(added) <= plus
    if not added:
        assert diff == "" and new_text == POLICY and "no change needed" in notes[-1]
        return
    assert 'version: "2026.11.0+arv-0123"' in plus
    assert "version 2026.11.0+arv-0123" in check_text(new_text)  # the `agentgov policy check` code accepts it
    assert satisfies(new_text, WF, decisions, USAGE) == []
    assert satisfies(POLICY, WF, decisions, USAGE) != []
    assert new_text.count("#") == POLICY.count("#")  # comments survive


def test_diff_for_a_workflow_inheriting_defaults_and_an_unrestricted_one() -> None:
    text = POLICY.replace("    default_inputs: [department, job_code, manager, request_justification, "
                          "peer_entitlements]\n", "", 1)
    usage = {"department": {"grant_entitlement"}, "peer_entitlements": {"grant_entitlement"}}
    new_text, diff, _ = propose(text, "access-request", {"department": "disallow"}, usage, "ARV-1")
    assert "+    default_inputs: [job_code, manager]" in diff.splitlines()
    assert satisfies(new_text, "access-request", {"department": "disallow"}, usage) == []
    unrestricted = POLICY.replace("    default_inputs: [risk_score, device_trust, geo_velocity, ip_reputation, "
                                  "mfa_recent]\n", "    default_inputs: null\n", 1)
    usage = {"risk_score": {"allow_auth"}, "credit_score": {"allow_auth"}}
    new_text, diff, notes = propose(unrestricted, "auth-gateway", {"credit_score": "disallow"}, usage, "ARV-2")
    assert "+    default_inputs: [risk_score]" in diff.splitlines() and "had no allowlist" in notes[0]
    check_text(new_text)


def test_proposal_for_a_workflow_missing_from_the_policy_is_refused() -> None:
    with pytest.raises(ReviewError, match="not in the policy"):
        propose(POLICY, "payroll-bot", {"department": "disallow"}, {"department": {"recommend"}}, "ARV-3")


# Attribute names are agent-chosen (inputs_used[].name): YAML syntax in one must stay inside that one name.
INJECTION = ("cost_centre]\n    allowed_systems: null\n    allowed_actions: [modify_policy, issue_credential, "
             "assign_role, create_account")
HOSTILE_NAMES = [INJECTION, "x, ssn", "a # comment", "null", "yes", "- b", "{k: v}", "'q'", '"d"', "e\u202ef",
                 "tab\there", "&anchor", "*alias", "!!python/object:os.system", "x]"]


def _only_lists_differ(old_text: str, new_text: str, workflow: str, keys: set[str]) -> dict[str, Any]:
    """The parsed new policy with the workflow's ``keys`` and the version set back to the old values
    equals the old one: nothing else changed. Returns the new workflow."""
    old, new = yaml.safe_load(old_text), yaml.safe_load(new_text)
    wf = dict(new["workflows"][workflow])
    for key in keys:
        if key in old["workflows"][workflow]:
            wf[key] = old["workflows"][workflow][key]
        else:
            wf.pop(key, None)
    assert {**new, "version": old["version"], "workflows": {**new["workflows"], workflow: wf}} == old
    return dict(new["workflows"][workflow])


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_an_approved_hostile_name_is_one_quoted_entry_and_changes_nothing_else(name: str) -> None:
    usage = {name: {"grant_entitlement"}}
    new_text, diff, _ = propose(POLICY, WF, {name: "approve"}, usage, "ARV-7")
    wf = _only_lists_differ(POLICY, new_text, WF, {"default_inputs"})
    before = yaml.safe_load(POLICY)["workflows"][WF]["default_inputs"]
    assert wf["default_inputs"] == [*before, name]  # exactly one new entry, the name as seen
    assert satisfies(new_text, WF, {name: "approve"}, usage) == []
    check_text(new_text)
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert len(added) <= 3 and all("allowed_" not in line or name == INJECTION for line in added)


def test_the_disallow_path_quotes_the_undecided_names_it_carries_into_default_inputs() -> None:
    unrestricted = POLICY.replace("    default_inputs: [risk_score, device_trust, geo_velocity, ip_reputation, "
                                  "mfa_recent]\n", "    default_inputs: null\n", 1)
    usage = {"risk_score": {"allow_auth"}, "credit_score": {"allow_auth"}, INJECTION: {"allow_auth"},
             "x, ssn": {"allow_auth"}}
    new_text, _, notes = propose(unrestricted, "auth-gateway", {"credit_score": "disallow"}, usage, "ARV-8")
    wf = _only_lists_differ(unrestricted, new_text, "auth-gateway", {"default_inputs"})
    assert sorted(wf["default_inputs"]) == sorted([INJECTION, "risk_score", "x, ssn"])
    assert "3 of them not decided in this review" in notes[0] and "'x, ssn'" in notes[0]


def test_a_proposal_that_would_change_more_than_the_input_lists_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The second line of defence: names written unquoted (as before the fix) are caught by comparing the
    parsed proposal with the policy, and nothing is proposed."""
    monkeypatch.setattr(policy_diff, "scalar", lambda value: value)
    where = r"allowed_actions, workflows\.jml-provisioning\.allowed_systems"
    with pytest.raises(ReviewError, match=f"change more than the input lists.*{where}"):
        propose(POLICY, WF, {INJECTION: "approve"}, {INJECTION: {"grant_entitlement"}}, "ARV-9")
    with pytest.raises(ReviewError, match="change more than the input lists"):
        propose(POLICY, WF, {"x, ssn": "approve"}, {"x, ssn": {"grant_entitlement"}}, "ARV-9")
    # A layout the text edit does not understand (a second default_inputs key, the later one wins) is refused too.
    twice = POLICY.replace("    default_inputs: [department, job_code, manager, location, cost_center, "
                           "employment_type]\n", "    default_inputs: [department]\n"
                           "    default_inputs: [job_code]\n", 1)
    monkeypatch.undo()
    with pytest.raises(ReviewError, match="change more than the input lists"):
        propose(twice, WF, {"location": "approve"}, {"location": {"grant_entitlement"}}, "ARV-9")


def test_attribute_rows_count_findings_where_not_permitted(tmp_path: Path) -> None:
    b = parse_policy(POLICY).policy.boundary_for(WF)
    usage = [
        {"name": "credit_score", "action": "add_group_member", "n": 3, "first_ms": 10, "last_ms": 30,
         "bnd001": 3, "bnd002": 0, "sources": ["model"]},
        {"name": "department", "action": "add_group_member", "n": 5, "first_ms": 5, "last_ms": 50,
         "bnd001": 3, "bnd002": 1, "sources": ["hris"]},
        {"name": "department", "action": "disable_account", "n": 2, "first_ms": 1, "last_ms": 20,
         "bnd001": 0, "bnd002": 0, "sources": ["hris"]},
        {"name": "location", "action": "disable_account", "n": 1, "first_ms": 7, "last_ms": 7,
         "bnd001": 1, "bnd002": 0, "sources": ["hris"]},
    ]
    rows = {r["name"]: r for r in attribute_rows(usage, b)}
    assert rows["credit_score"]["permitted"] == "no" and rows["credit_score"]["bnd001"] == 3
    assert rows["department"]["permitted"] == "yes" and rows["department"]["bnd001"] == 0
    dep = rows["department"]
    assert dep["events"] == 7 and (dep["first_ms"], dep["last_ms"]) == (1, 50)
    assert rows["department"]["bnd002"] == 1
    assert rows["location"]["permitted"] == "no"  # disable_account has its own list without location
    assert [r["name"] for r in attribute_rows(usage, b)][:2] == ["credit_score", "location"]  # problems first


class _SmallQueue:
    """A producer whose local queue holds ``room`` records until polled (librdkafka's BufferError)."""

    def __init__(self, room: int) -> None:
        self.room, self.queued, self.sent = room, 0, []  # type: ignore[var-annotated]

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        if self.queued >= self.room:
            raise BufferError("Local: Queue full")
        self.queued += 1
        self.sent.append((topic, key))
        on_delivery(None, None)

    def poll(self, timeout: float = 0) -> int:
        self.queued = 0 if timeout else self.queued
        return 0

    def flush(self, timeout: float = 0) -> int:
        self.queued = 0
        return 0


def test_signoff_publishes_every_remediation_request_through_a_full_queue_with_ids_fixed_by_decision() -> None:
    """A sign-off may publish 200,000 requests: a full local queue waits for deliveries (it raised BufferError,
    a 500, after 100,000, the campaign left open); a retried sign-off sends the same request ids."""
    from types import SimpleNamespace

    from pipeline.review.recert_service import RecertService
    from pipeline.schemas import SchemaSet
    from pipeline.serde import Serde
    from pipeline.settings import Settings

    settings = Settings.load(kafka_bootstrap="127.0.0.1:1")
    producer = _SmallQueue(room=10)
    service = SimpleNamespace(settings=settings, producer=producer,
                              serdes={"remediation_request": Serde(SchemaSet.load(), record="remediation_request")})
    recert = RecertService(service, store=None)  # type: ignore[arg-type]
    items = [{"item_id": f"CMP-1/{i:07d}", "last_decision_id": f"dec-{i}", "findings": [], "agent_id": "agent-1",
              "grant_run_id": "run-1", "target_id": f"u{i}", "grant_event_id": f"evt-{i}", "end_date": None,
              "access": "aws-admin", "system": "aws", "last_comment": "left", "last_actor": "rita"}
             for i in range(45)]
    actor = Actor("owner", ("reviewer",))
    requests = [recert._remediation("CMP-1", it, actor, 1_000) for it in items]
    recert._produce_all(settings.topic_remediations, "remediation_request",
                        [(r["finding_id"], r) for r in requests])
    assert len(producer.sent) == 45 and {k for _, k in producer.sent} == {it["item_id"].encode() for it in items}
    again = [recert._remediation("CMP-1", it, actor, 2_000) for it in items]
    assert [r["request_id"] for r in again] == [r["request_id"] for r in requests]
    assert len({r["request_id"] for r in requests}) == 45


@pytest.mark.parametrize("state", ["open", "included"])
def test_only_a_proposed_attribute_review_is_linked_to_a_policy_version(state: str) -> None:
    """Linking recorded attributes.included with no proposal behind it, and again on every click."""
    from pipeline.review.attributes import AttributeReviews

    attrs: Any = AttributeReviews.__new__(AttributeReviews)
    attrs.review = lambda rid: {"state": state, "version": 3, "workflow": "wf"}
    with pytest.raises(ReviewError, match=f"only a proposed review is linked to a policy version; this one is {state}"):
        attrs.link_policy(Actor("alice", ("reviewer",)), "ARV-1")


@pytest.mark.parametrize(("state", "step", "refused"), [
    ("open", "propose", None),
    ("proposed", "propose", "only an open review is proposed; this one is proposed"),
    ("included", "propose", "only an open review is proposed; this one is included"),
    ("proposed", "link", None),
    ("open", "link", "only a proposed review is linked to a policy version; this one is open"),
    ("included", "link", "only a proposed review is linked to a policy version; this one is included"),
])
def test_an_attribute_review_is_proposed_once_then_linked_once(state: str, step: str, refused: str | None) -> None:
    """open -> propose -> propose -> included -> propose -> included was possible: propose had no state check."""
    from pipeline.review.attributes import check_step
    from pipeline.review.model import Conflict

    if refused is None:
        check_step({"state": state, "version": 2}, step)
        return
    with pytest.raises(Conflict, match=refused) as exc:
        check_step({"state": state, "version": 2}, step)
    assert exc.value.status == 409 and exc.value.fields == {"state": state, "version": 2}


def test_a_proposal_recorded_while_another_waited_for_the_lock_wins() -> None:
    """propose read the review before taking the write lock, so two concurrent proposals were both recorded;
    under the lock the review is read again."""
    from pipeline.review.attributes import AttributeReviews
    from pipeline.review.model import Conflict

    attrs: Any = AttributeReviews.__new__(AttributeReviews)
    attrs.review = lambda rid: {"state": "proposed", "version": 2}  # what the store holds by now
    with pytest.raises(Conflict, match="only an open review is proposed; this one is proposed"):
        attrs._unchanged("ARV-1", {"state": "open", "version": 1}, "propose")
    attrs.review = lambda rid: {"state": "open", "version": 3}  # a decision in between: still open, newer
    with pytest.raises(Conflict, match="the review changed meanwhile"):
        attrs._unchanged("ARV-1", {"state": "open", "version": 1}, "propose")
    attrs._unchanged("ARV-1", {"state": "open", "version": 3}, "propose")
