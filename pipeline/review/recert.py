"""Recertification campaigns: scope, recommendation with reasons, and the decision rules. Pure: no I/O, no clock.

A campaign is a scope (tier, workflow, agent, age, never certified), an owner and a due date. Creating it
snapshots one *item* per held access in scope. Each item carries a recommendation computed here from the
evidence the snapshot froze (findings on the grant and on its run, whether the identity has since left,
the policy version, the human approval), with the reasons shown to the reviewer:

    revoke   a high or critical finding on the grant or its run, or the identity has left since
    certify  granted under an approved policy version, no finding at all, and approved by a person
    none     anything else (the reasons say what is missing)

Items move ``pending -> certified | revoked``; ``reassign`` keeps an item pending under another reviewer.
Nothing is ever applied by the clock: an overdue campaign alerts (agentgov_recert_campaigns_overdue), it does
not decide. ``TIMEOUT_ACTIONS`` holds the only accepted timeout behaviour.

Example::

    rec, reasons = recommend(Evidence(findings=(("AG-ESC-003", "critical", "run"),), identity_left=False,
                                      policy_approved=True, approved_by="mgr"))
    # ("revoke", ["critical finding AG-ESC-003 on its run"])
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .model import MAX_DIGITS, MAX_TEXT, Actor, Forbidden, ReviewError, ascii_digits, require_role, same_person

RECOMMENDATIONS = ("revoke", "certify", "none")
ITEM_STATES = ("pending", "certified", "revoked")
ITEM_ACTIONS = ("certify", "revoke", "reassign")
CAMPAIGN_STATES = ("open", "closed")
TIMEOUT_ACTIONS = ("none",)
NO_AUTO_APPLY = ("auto-apply on timeout is refused: auto-apply + deny by default revokes everything nobody "
                 "looked at (and auto-certify rubber-stamps it). An overdue campaign alerts instead "
                 "(AgentgovRecertCampaignOverdue); a person decides every item.")
SERIOUS = ("critical", "high")
MAX_DAYS = 3650
DAY_MS = 86_400_000
# A revoke's end date is a grace period for the remediation, not a second, open-ended certification: it may lie
# at most this many days after the campaign's due date.
REVOKE_END_MAX_DAYS = 90


@dataclass(frozen=True)
class Scope:
    """Which held access a campaign covers. Empty fields mean any."""

    min_tier: int | None = None
    workflow: str = ""
    agent: str = ""
    within_days: int | None = None
    never_certified: bool = False

    def check(self) -> Scope:
        if self.min_tier is not None and not 0 <= self.min_tier <= 3:
            raise ReviewError("min_tier must be between 0 and 3")
        if self.within_days is not None and not 1 <= self.within_days <= MAX_DAYS:
            raise ReviewError(f"within_days must be between 1 and {MAX_DAYS}")
        for name in ("workflow", "agent"):
            if len(getattr(self, name)) > 512:
                raise ReviewError(f"{name} longer than 512 characters")
        return self

    def describe(self) -> str:
        parts = ["held access granted by agents"]
        if self.min_tier is not None:
            parts.append(f"tier >= {self.min_tier}")
        if self.workflow:
            parts.append(f"workflow {self.workflow}")
        if self.agent:
            parts.append(f"agent {self.agent}")
        if self.within_days is not None:
            parts.append(f"granted within the last {self.within_days} days")
        if self.never_certified:
            parts.append("never certified")
        return ", ".join(parts)

    def as_payload(self) -> dict[str, str]:
        return {"scope_min_tier": "" if self.min_tier is None else str(self.min_tier),
                "scope_workflow": self.workflow, "scope_agent": self.agent,
                "scope_within_days": "" if self.within_days is None else str(self.within_days),
                "scope_never_certified": "1" if self.never_certified else "0"}


@dataclass(frozen=True)
class Evidence:
    """What the recommendation looks at, as frozen in the item snapshot.

    ``findings``: (code, severity, where) with where ``grant`` or ``run``. ``policy_approved``: None when the
    policy lists no approved versions (or the grant's event is no longer retained)."""

    findings: tuple[tuple[str, str, str], ...] = ()
    identity_left: bool = False
    left_how: str = ""
    policy_approved: bool | None = None
    approved_by: str | None = None
    policy_ref: str = ""


@dataclass
class Recommendation:
    value: str
    reasons: list[str] = field(default_factory=list)


def recommend(ev: Evidence) -> tuple[str, list[str]]:
    """(recommendation, reasons). Every recommendation, including ``none``, names its reasons."""
    serious = [f"{sev} finding {code} on {'the grant' if where == 'grant' else 'its run'}"
               for code, sev, where in ev.findings if sev in SERIOUS]
    revoke = list(serious)
    if ev.identity_left:
        revoke.append(f"identity has left since ({ev.left_how or 'account disabled or deleted'})")
    if revoke:
        return "revoke", revoke
    missing: list[str] = []
    if ev.findings:
        missing += [f"{sev} finding {code} on {'the grant' if where == 'grant' else 'its run'}"
                    for code, sev, where in ev.findings]
    if ev.policy_approved is None:
        missing.append("policy version unknown or no approved versions configured")
    elif not ev.policy_approved:
        missing.append(f"policy version {ev.policy_ref or '?'} is not approved")
    if not ev.approved_by:
        missing.append("no human approval recorded")
    if missing:
        return "none", missing
    return "certify", [f"approved policy version {ev.policy_ref}", "no finding on the grant or its run",
                       f"human-approved by {ev.approved_by}"]


def campaign_id() -> str:
    return f"CMP-{uuid.uuid4().hex[:12]}"


def item_id(cid: str, n: int) -> str:
    return f"{cid}/{n:07d}"


def split_item_id(iid: str) -> tuple[str, int]:
    cid, _, n = iid.rpartition("/")
    if not cid.startswith("CMP-") or not ascii_digits(n):  # bounded: int() of 5,000 digits was a 500
        raise ReviewError(f"not a campaign item id: {iid[:80]!r} (CMP-<id>/<number of at most {MAX_DIGITS} digits>)")
    return cid, int(n)


def check_new_campaign(actor: Actor, *, name: str, owner: str, due_at_ms: int, now_ms: int,
                       on_timeout: str = "none") -> None:
    """Refuse a campaign that could not be run safely (no auto-apply, a real due date, an owner)."""
    require_role(actor.roles, "reviewer", "approver")
    if on_timeout not in TIMEOUT_ACTIONS:
        raise ReviewError(NO_AUTO_APPLY)
    if not name.strip() or len(name) > 200:
        raise ReviewError("a campaign needs a name (at most 200 characters)")
    if not owner.strip() or len(owner) > 200:
        raise ReviewError("a campaign needs an owner")
    if due_at_ms <= now_ms:
        raise ReviewError("the due date must be in the future")
    if due_at_ms > now_ms + 366 * DAY_MS:
        raise ReviewError("the due date may be at most a year ahead")


def check_item_decision(actor: Actor, *, state: str, assignee: str, owner: str, campaign_state: str, action: str,
                        justification: str | None, certify_needs_justification: bool,
                        reassign_to: str | None = None, end_ms: int | None = None, now_ms: int = 0,
                        due_at_ms: int | None = None, target: str = "", approved_by: str = "") -> str:
    """The state ``action`` leads an item to; raises :class:`ReviewError` when not allowed.

    ``due_at_ms`` is the campaign's due date: a revoke's end date may lie at most ``REVOKE_END_MAX_DAYS``
    after it (without a bound, a far-future end date kept the access as if certified).

    Separation of duties, as the workbench's ``check_not_own``: nobody but to reassign it decides an item
    about their own access (``target``) or about a grant they approved (``approved_by``, the human approver
    the snapshot recorded); certifying one's own approval attests nothing."""
    require_role(actor.roles, "reviewer")
    if campaign_state != "open":
        raise ReviewError("the campaign is signed off; its items cannot change")
    if action not in ITEM_ACTIONS:
        raise ReviewError(f"unknown action {action!r}; expected one of {', '.join(ITEM_ACTIONS)}")
    if actor.user not in (assignee, owner):
        raise Forbidden(f"item is assigned to {assignee}; only they or the campaign owner ({owner}) decide it")
    if state != "pending":
        raise ReviewError(f"item is already {state}")
    if action != "reassign" and same_person(actor.user, target):
        raise Forbidden("separation of duties: this item is access you hold; reassign it to another reviewer")
    if action != "reassign" and approved_by and same_person(actor.user, approved_by):
        raise Forbidden("separation of duties: you approved this grant; reassign it to another reviewer")
    text = (justification or "").strip()
    if len(text) > MAX_TEXT:
        raise ReviewError(f"justification longer than {MAX_TEXT} characters")
    if action == "certify" and certify_needs_justification and not text:
        raise ReviewError("certify needs a justification (governance policy review.certify_justification_required)")
    if action in ("revoke", "reassign") and not text:
        raise ReviewError(f"{action} needs a justification")
    if action == "reassign":
        if not reassign_to or not reassign_to.strip():
            raise ReviewError("reassign needs the reviewer to hand the item to")
        if reassign_to.strip() == assignee:
            raise ReviewError("the item is already assigned to them")
        return "pending"
    if action == "revoke" and end_ms is not None:
        if end_ms <= now_ms:
            raise ReviewError("the end date of a revoke must be in the future")
        latest = max(due_at_ms or now_ms, now_ms) + REVOKE_END_MAX_DAYS * DAY_MS
        if end_ms > latest:
            raise ReviewError(f"the end date of a revoke may be at most {REVOKE_END_MAX_DAYS} days after the "
                              "campaign's due date")
    return "certified" if action == "certify" else "revoked"


def check_bulk(recommendations: dict[str, str], action: str | None = None) -> str:
    """Bulk decisions only on items sharing one recommendation; returns it. Certifying in bulk only what the
    evidence recommends certifying: items recommended for revocation (a high finding, a leaver) or without a
    recommendation are certified one by one, each looked at (revoking in bulk stays open: the safe side)."""
    if not recommendations:
        raise ReviewError("nothing selected")
    distinct = sorted(set(recommendations.values()))
    if len(distinct) != 1:
        raise ReviewError(f"bulk decisions need items sharing one recommendation; selected: {', '.join(distinct)}")
    if action == "certify" and distinct[0] != "certify":
        raise ReviewError(f"items recommended {distinct[0]!r} are certified one by one, not in bulk")
    return distinct[0]


def check_signoff(actor: Actor, *, owner: str, campaign_state: str, pending: int, comment: str | None,
                  holds_access: bool = False) -> None:
    """``holds_access``: the signer is the identity of an item of the campaign. Nobody attests a review of
    their own access, whoever decided the item: an approver who holds nothing in it signs off instead.

    ``comment`` is the signer's attestation, in their own words, and is required: a sign-off is what an
    auditor reads as the campaign's conclusion. It is checked last, so a sign-off that is not allowed says so
    before it asks for words."""
    require_role(actor.roles, "reviewer", "approver")
    if campaign_state != "open":
        raise ReviewError("the campaign is already signed off")
    if actor.user != owner and "approver" not in actor.roles:
        raise Forbidden(f"only the owner ({owner}) or an approver signs a campaign off")
    if holds_access:
        raise Forbidden("separation of duties: the campaign reviews access you hold; an approver who holds "
                        "none of it signs it off")
    if pending:
        raise ReviewError(f"{pending} items are still pending: every item needs a decision before sign-off "
                          "(nothing is decided by default)")
    text = (comment or "").strip()
    if not text:
        raise ReviewError("sign-off needs an attestation comment (what was reviewed, and any caveat)")
    if len(text) > MAX_TEXT:
        raise ReviewError(f"comment longer than {MAX_TEXT} characters")


def progress(counts: dict[str, int]) -> dict[str, Any]:
    total = sum(counts.values())
    decided = total - counts.get("pending", 0)
    return {"total": total, "decided": decided, "pending": counts.get("pending", 0),
            "certified": counts.get("certified", 0), "revoked": counts.get("revoked", 0),
            "percent": round(100 * decided / total, 1) if total else 100.0}
