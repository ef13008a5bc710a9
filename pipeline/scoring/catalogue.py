"""The rule catalogue: one declarative entry per finding code.

Codes are stable: dashboards, alert rules and auditors key on them. Never reuse a retired code.
``agentgov rules`` prints this table (:func:`render_catalogue`); docs/rules.md is generated from it.

Example::

    SELF_GRANT.finding("agent 'a' granted grant_entitlement to itself")   # -> Finding
    print(render_catalogue("markdown"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .findings import Category, Finding, Severity

# Framework references: OWASP Top 10 for Agentic Applications (2026), OWASP Non-Human Identities Top 10
# (2025), NIST CSF 2.0.
ASI01 = "OWASP-ASI01 Agent Goal Hijack"
ASI02 = "OWASP-ASI02 Tool Misuse and Exploitation"
ASI03 = "OWASP-ASI03 Identity and Privilege Abuse"
ASI04 = "OWASP-ASI04 Agentic Supply Chain Vulnerabilities"
ASI05 = "OWASP-ASI05 Unexpected Code Execution"
ASI06 = "OWASP-ASI06 Memory and Context Poisoning"
ASI07 = "OWASP-ASI07 Insecure Inter-Agent Communication"
ASI08 = "OWASP-ASI08 Cascading Failures"
ASI09 = "OWASP-ASI09 Human-Agent Trust Exploitation"
ASI10 = "OWASP-ASI10 Rogue Agents"
NHI1 = "OWASP-NHI1 Improper Offboarding"
NHI2 = "OWASP-NHI2 Secret Leakage"
NHI3 = "OWASP-NHI3 Vulnerable Third-Party NHI"
NHI4 = "OWASP-NHI4 Insecure Authentication"
NHI5 = "OWASP-NHI5 Overprivileged NHI"
NHI6 = "OWASP-NHI6 Insecure Cloud Deployment Configurations"
NHI7 = "OWASP-NHI7 Long-Lived Secrets"
NHI8 = "OWASP-NHI8 Environment Isolation"
NHI9 = "OWASP-NHI9 NHI Reuse"
NHI10 = "OWASP-NHI10 Human Use of NHI"
PR_AA_01 = "NIST-CSF PR.AA-01"
PR_AA_02 = "NIST-CSF PR.AA-02"
PR_AA_03 = "NIST-CSF PR.AA-03"
PR_AA_04 = "NIST-CSF PR.AA-04"
PR_AA_05 = "NIST-CSF PR.AA-05"
PR_DS_01 = "NIST-CSF PR.DS-01"
DE_CM = "NIST-CSF DE.CM-09"
DE_AE = "NIST-CSF DE.AE-02"


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """Catalogue entry of one finding code."""

    code: str
    title: str
    severity: Severity
    category: Category
    meaning: str
    evidence_fields: tuple[str, ...]
    refs: tuple[str, ...]

    def finding(self, message: str, related: tuple[str, ...] = ()) -> Finding:
        return Finding(self.code, self.severity, self.category, message, self.evidence_fields, self.refs, related)


CATALOGUE: dict[str, RuleSpec] = {}


def spec(
    code: str, title: str, severity: Severity, category: Category, meaning: str,
    evidence_fields: tuple[str, ...], refs: tuple[str, ...],
) -> RuleSpec:
    if code in CATALOGUE:
        raise ValueError(f"duplicate finding code {code}")
    entry = RuleSpec(code, title, severity, category, meaning, evidence_fields, refs)
    CATALOGUE[code] = entry
    return entry


S, C = Severity, Category

# -- authority and approval (rules.py) ----------------------------------------------------------------
PRIVILEGED_WITHOUT_APPROVAL = spec(
    "AG-AUTH-001", "Privileged grant without human approval", S.critical, C.risk,
    "Access at a privilege tier the workflow says needs a human approval, or to an entitlement or group the "
    "policy lists as privileged, was granted with no approved_by.",
    ("action", "decision.outcome", "resource.privilege_tier", "resource.entitlement", "resource.resource_id",
     "decision.approved_by"),
    (ASI03, NHI5, PR_AA_05),
)
MODEL_FINAL_AUTHORITY = spec(
    "AG-AUTH-002", "Model held final authority over an access change", S.high, C.risk,
    "The LLM's output was the final authorization of an access change: no separation of interpretation "
    "from authorization.",
    ("action", "decision.authority", "decision.outcome", "agent.model_id"),
    (ASI09, ASI03, PR_AA_05),
)
SELF_GRANT = spec(
    "AG-AUTH-003", "Self-grant", S.critical, C.risk,
    "The agent granted access to itself or to the principal it acts on behalf of.",
    ("agent.agent_id", "agent.on_behalf_of", "target.identity_id", "action"),
    (ASI03, NHI5, PR_AA_05),
)

# -- decision boundary and policy version (boundary.py) -------------------------------------------------
INPUT_OUTSIDE_ALLOWLIST = spec(
    "AG-BND-001", "Input attribute outside the allowlist", S.medium, C.risk,
    "The decision evaluated an attribute or signal the workflow's allowlist for this action does not "
    "permit: a route for context poisoning or decisions on data the agent should not use.",
    ("workflow_id", "action", "inputs_used"),
    (ASI06, ASI01, PR_AA_05),
)
TOO_MANY_SIGNALS = spec(
    "AG-BND-002", "Too many signals (blast radius)", S.low, C.risk,
    "The decision evaluated more inputs than the workflow's max_signals: a wider attack surface and a "
    "decision no reviewer can follow.",
    ("workflow_id", "inputs_used"),
    (ASI06, ASI02, PR_AA_05),
)
ACTION_OUTSIDE_BOUNDARY = spec(
    "AG-BND-003", "Action outside the workflow boundary", S.high, C.risk,
    "The agent took an action its workflow is not allowed to take.",
    ("workflow_id", "action", "agent.agent_id"),
    (ASI02, ASI10, NHI5, PR_AA_05),
)
SYSTEM_OUTSIDE_BOUNDARY = spec(
    "AG-BND-004", "Target system outside the workflow boundary", S.high, C.risk,
    "The agent acted on a system its workflow is not allowed to touch.",
    ("workflow_id", "resource.system", "agent.agent_id"),
    (ASI02, ASI10, NHI5, PR_AA_05),
)
UNAPPROVED_POLICY_VERSION = spec(
    "AG-POL-001", "Stale or unapproved policy version", S.medium, C.risk,
    "The decision was taken under a policy id or version that is not in the approved list: policy drift.",
    ("policy.policy_id", "policy.policy_version"),
    (ASI10, PR_AA_05, DE_CM),
)

# -- lifecycle (lifecycle.py) ---------------------------------------------------------------------------
GRANT_TO_INACTIVE = spec(
    "AG-LCM-001", "Access granted to a terminated or pre-hire identity", S.high, C.risk,
    "Access was granted to an identity whose lifecycle state blocks that grant (terminated; pre-hire "
    "beyond account creation).",
    ("action", "target.identity_id", "target.lifecycle_state", "decision.outcome"),
    (NHI1, ASI03, PR_AA_01, PR_AA_05),
)
TRIGGER_ACTION_MISMATCH = spec(
    "AG-LCM-002", "Trigger kind does not allow this action", S.high, C.risk,
    "The workflow's lifecycle rules do not let this trigger kind cause this action (e.g. a leaver "
    "that grants access).",
    ("workflow_id", "trigger.kind", "action"),
    (ASI01, ASI02, PR_AA_01, PR_AA_05),
)
UNTRIGGERED_ACCESS_CHANGE = spec(
    "AG-LCM-003", "Access change not tied to a lifecycle or request trigger", S.medium, C.risk,
    "An access change was caused by a trigger kind the workflow does not accept as justification, or "
    "carries no trigger reference to trace it to an HR event or request.",
    ("workflow_id", "trigger.kind", "trigger.ref", "action"),
    (ASI01, PR_AA_01, PR_AA_05),
)

# -- evidence and integrity (evidence.py) -----------------------------------------------------------------
MISSING_EVIDENCE = spec(
    "AG-EVD-001", "Access change without evidence", S.medium, C.evidence,
    "An access change lacks its trigger reference, the inputs it evaluated, or the policy version in force.",
    ("trigger.ref", "inputs_used", "policy.policy_version"),
    (ASI09, PR_AA_05, DE_AE),
)
HASH_MISMATCH = spec(
    "AG-EVD-002", "Event hash does not match its content", S.critical, C.evidence,
    "evidence.event_hash is not the SHA-256 of the event's canonical content: the event was changed "
    "after it was hashed.",
    ("evidence.event_hash", "event_id"),
    (PR_DS_01, PR_AA_04, ASI07),
)
CHAIN_GAP = spec(
    "AG-EVD-003", "Missing step in the run's evidence chain", S.high, C.evidence,
    "A step's prev_event_hash is missing or does not match the previous step's event_hash, or steps "
    "between it and the last seen step of the run never arrived.",
    ("run_id", "step", "evidence.prev_event_hash"),
    (PR_DS_01, DE_AE, ASI10),
)
REORDERED_OR_REPLAYED = spec(
    "AG-EVD-004", "Reordered or replayed step", S.high, C.evidence,
    "A step arrived after a later step of the same run, repeats a step number already seen, or is an "
    "exact replay of an event already seen.",
    ("run_id", "step", "event_id", "evidence.event_hash"),
    (PR_DS_01, PR_AA_04, ASI07),
)
DUPLICATE_ID_CONFLICT = spec(
    "AG-EVD-005", "Duplicate event_id with different content", S.critical, C.evidence,
    "An event reuses the event_id of an earlier event but its content hash differs: one of them was "
    "forged or altered.",
    ("event_id", "evidence.event_hash"),
    (PR_DS_01, ASI07),
)
BAD_SIGNATURE = spec(
    "AG-EVD-006", "Unsigned event or bad signature", S.critical, C.evidence,
    "Signing is required and the event carries no signature, names an unknown key, or its HMAC-SHA256 "
    "does not verify; or a signature that is present does not verify.",
    ("evidence.signature", "evidence.key_id", "agent.agent_id"),
    (PR_AA_03, PR_AA_04, NHI4, ASI07),
)
KEY_NOT_BOUND = spec(
    "AG-EVD-007", "Signed with a key not registered for the agent", S.critical, C.evidence,
    "The signature verifies, but its key_id is not registered for the event's agent.agent_id "
    "(signing_key_agents): one agent signed in another's name, or a key is used outside its binding.",
    ("evidence.key_id", "agent.agent_id"),
    (PR_AA_03, PR_AA_04, NHI9, ASI03, ASI07),
)

# -- separation of duties (sod.py) ------------------------------------------------------------------------
TOXIC_PAIR = spec(
    "AG-SOD-001", "Separation-of-duties toxic pair completed", S.high, C.risk,
    "The grant gives an identity the second half of a toxic pair it must not hold together.",
    ("target.identity_id", "resource.entitlement", "resource.resource_id"),
    (PR_AA_05, ASI03, NHI5),
)

# -- drift against the agent's own baseline (drift.py) ------------------------------------------------------
NEW_ACTION = spec(
    "AG-DRF-001", "New action for this agent", S.low, C.drift,
    "The agent took an action it never took in its baseline window.",
    ("agent.agent_id", "action"),
    (ASI10, DE_CM, DE_AE),
)
NEW_SYSTEM = spec(
    "AG-DRF-002", "New system for this agent", S.medium, C.drift,
    "The agent acted on a system it never touched in its baseline window.",
    ("agent.agent_id", "resource.system"),
    (ASI10, DE_CM, DE_AE),
)
NEW_PRIVILEGE = spec(
    "AG-DRF-003", "New entitlement or higher tier than ever", S.medium, C.drift,
    "The agent granted an entitlement it never granted before, or at a higher privilege tier than its "
    "baseline maximum.",
    ("agent.agent_id", "resource.entitlement", "resource.privilege_tier"),
    (ASI10, ASI03, NHI5, DE_CM),
)
NEW_INPUT = spec(
    "AG-DRF-004", "New input attribute for this agent", S.low, C.drift,
    "The decision evaluated an input the agent never used in its baseline window.",
    ("agent.agent_id", "inputs_used"),
    (ASI06, ASI10, DE_CM),
)
GRANT_RATE_DRIFT = spec(
    "AG-DRF-005", "Grant rate far above the agent's baseline", S.medium, C.drift,
    "The agent's grants per hour over the recent window exceed its baseline rate by more than the "
    "policy's factor.",
    ("agent.agent_id", "action", "decision.outcome", "occurred_at"),
    (ASI10, ASI08, DE_AE),
)
STALE_POLICY_SHARE = spec(
    "AG-DRF-006", "Policy drift: share of stale policy versions", S.medium, C.drift,
    "Over the recent window, more of the agent's decisions than the policy's threshold ran under "
    "unapproved policy versions.",
    ("agent.agent_id", "policy.policy_id", "policy.policy_version"),
    (ASI10, PR_AA_05, DE_CM),
)

# -- hidden escalation across steps (escalation.py) -----------------------------------------------------------
_ESC_FIELDS = ("agent.agent_id", "agent.on_behalf_of", "target.identity_id", "action", "resource.resource_id",
               "resource.entitlement", "resource.privilege_tier", "decision.authority", "decision.approved_by")
ESC_GROUP_NESTING = spec(
    "AG-ESC-001", "Hidden escalation: group nesting", S.critical, C.escalation,
    "The agent created a group, put itself or its principal in it, and had a privileged role or entitlement "
    "granted to the group, with no human authority over the completing step.",
    _ESC_FIELDS, (ASI03, ASI10, NHI5, PR_AA_05),
)
ESC_TIER_STEPPING = spec(
    "AG-ESC-002", "Hidden escalation: tier stepping", S.critical, C.escalation,
    "One identity was granted access at strictly increasing privilege tiers, ending at tier 3, with no human "
    "authority over the final step: each step looks small, the sum is admin.",
    _ESC_FIELDS, (ASI03, NHI5, PR_AA_05),
)
ESC_TRANSIENT_PRIVILEGE = spec(
    "AG-ESC-003", "Hidden escalation: transient privilege", S.critical, C.escalation,
    "A privileged entitlement was granted and revoked again within the transient window: used and hidden "
    "before any review could see it.",
    _ESC_FIELDS, (ASI03, ASI10, PR_AA_05, DE_AE),
)
ESC_DELEGATION_SELF_GRANT = spec(
    "AG-ESC-004", "Hidden escalation: delegation chain ending in a self-grant", S.critical, C.escalation,
    "Access was delegated from agent to agent, and the last agent granted access to itself or its principal.",
    _ESC_FIELDS, (ASI07, ASI03, NHI9, PR_AA_05),
)

# -- across runs and partitions (crossrun.py; found by the correlator) ----------------------------------------
XRN_TIER_STEPPING = spec(
    "AG-XRN-001", "Hidden escalation across runs: tier stepping", S.critical, C.escalation,
    "AG-ESC-002 over one identity's grants from different runs on different partitions, which no single "
    "scorer sees together. The finding names every step's event and run.",
    _ESC_FIELDS, (ASI03, NHI5, PR_AA_05),
)
XRN_TRANSIENT_PRIVILEGE = spec(
    "AG-XRN-002", "Hidden escalation across runs: transient privilege", S.critical, C.escalation,
    "AG-ESC-003 with the grant and the revoke in different runs on different partitions.",
    _ESC_FIELDS, (ASI03, ASI10, PR_AA_05, DE_AE),
)
XRN_DELEGATION_LAUNDERING = spec(
    "AG-XRN-003", "Hidden escalation: delegation laundering", S.critical, C.escalation,
    "A privileged grant, with no human authority, landed on an agent upstream in the granting agent's "
    "delegation chain, or on that agent's principal: power handed down came back up. Followed up to the "
    "policy's max_delegation_depth; the finding names every hop.",
    _ESC_FIELDS, (ASI07, ASI03, NHI9, PR_AA_05),
)
XRN_GRANT_RATE = spec(
    "AG-XRN-004", "Grant rate far above baseline across partitions", S.medium, C.drift,
    "AG-DRF-005 counted over all of the agent's grants, whichever run or partition they came from, with no "
    "per-key cap: a burst split over many runs.",
    ("agent.agent_id", "action", "decision.outcome", "occurred_at"),
    (ASI10, ASI08, DE_AE),
)
XRN_TOXIC_PAIR = spec(
    "AG-XRN-005", "Separation-of-duties toxic pair against holdings", S.high, C.risk,
    "AG-SOD-001 against everything the identity holds, however long ago it was granted (holdings topic), "
    "when the first half came from another partition or is older than a scorer's context.",
    ("target.identity_id", "resource.entitlement", "resource.resource_id"),
    (PR_AA_05, ASI03, NHI5),
)
XRN_DUPLICATE_ID = spec(
    "AG-XRN-006", "Duplicate event_id across partitions", S.critical, C.evidence,
    "Two events with the same event_id arrived on different partitions (so in different runs): one of "
    "them was forged or replayed into another run.",
    ("event_id", "evidence.event_hash", "run_id"),
    (PR_DS_01, ASI07),
)
XRN_GRANT_TO_LEAVER = spec(
    "AG-XRN-007", "Access granted to an identity the log shows has left", S.high, C.risk,
    "The identity's account was disabled (an executed disable_account, however long ago, from the holdings "
    "topic) and never re-created since, yet access was granted to it while the event called it active: "
    "the agent's own lifecycle claim contradicts the log.",
    ("target.identity_id", "target.lifecycle_state", "action"),
    (NHI1, PR_AA_05, ASI03),
)
XRN_GROUP_NESTING = spec(
    "AG-XRN-008", "Hidden escalation across runs: group nesting", S.critical, C.escalation,
    "AG-ESC-001 over one agent's steps from different runs on different partitions: a group created in one "
    "run, a principal added to it in another, the group granted privilege in a third, with no human "
    "authority. The finding names every step's event and run.",
    _ESC_FIELDS, (ASI03, NHI5, PR_AA_05),
)

ESCALATION_PATTERNS: dict[str, str] = {
    "AG-ESC-001": "group_nesting",
    "AG-ESC-002": "tier_stepping",
    "AG-ESC-003": "transient_privilege",
    "AG-ESC-004": "delegation_self_grant",
    "AG-XRN-001": "tier_stepping",
    "AG-XRN-002": "transient_privilege",
    "AG-XRN-003": "delegation_laundering",
    "AG-XRN-008": "group_nesting",
}
"""Escalation code -> pattern name. A closed set: used as the ``pattern`` metric label."""


def _as_dict(s: RuleSpec) -> dict[str, object]:
    return {"code": s.code, "severity": s.severity.value, "category": s.category.value, "title": s.title,
            "meaning": s.meaning, "evidence_fields": list(s.evidence_fields), "refs": list(s.refs),
            "pattern": ESCALATION_PATTERNS.get(s.code)}


def render_catalogue(fmt: str = "text") -> str:
    """The catalogue as ``text`` (terminal), ``json`` (a list of entries) or ``markdown`` (docs/rules.md)."""
    entries = sorted(CATALOGUE.values(), key=lambda s: s.code)
    if fmt == "json":
        return json.dumps([_as_dict(s) for s in entries], indent=2)
    if fmt == "markdown":
        return _markdown(entries)
    if fmt != "text":
        raise ValueError(f"unknown catalogue format {fmt!r}: use text, json or markdown")
    lines = []
    for s in entries:
        lines.append(f"{s.code}  {s.severity.value:<8} {s.category.value:<10} {s.title}")
        lines.append(f"    {s.meaning}")
        lines.append(f"    evidence: {', '.join(s.evidence_fields)}")
        lines.append(f"    refs: {'; '.join(s.refs)}")
    return "\n".join(lines)


def _markdown(entries: list[RuleSpec]) -> str:
    out = [
        "# Rule catalogue",
        "",
        "<!-- Generated by `agentgov rules --format markdown`; do not edit by hand. -->",
        "",
        "Every finding carries a stable code, a severity, a one-line message naming the offending values, the "
        "event fields it used as evidence, and its framework references. Severity weights and risk levels: "
        "see `pipeline/scoring/findings.py`.",
        "",
        "| Code | Severity | Category | Title |",
        "|---|---|---|---|",
    ]
    out += [f"| {s.code} | {s.severity.value} | {s.category.value} | {s.title} |" for s in entries]
    for s in entries:
        out += ["", f"## {s.code} {s.title}", "", s.meaning, ""]
        out.append(f"- Severity: **{s.severity.value}**; category: `{s.category.value}`")
        if s.code in ESCALATION_PATTERNS:
            out.append(f"- Escalation pattern: `{ESCALATION_PATTERNS[s.code]}`")
        out.append(f"- Evidence fields: {', '.join(f'`{f}`' for f in s.evidence_fields)}")
        out.append(f"- References: {'; '.join(s.refs)}")
    return "\n".join(out) + "\n"
