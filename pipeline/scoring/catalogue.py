"""The rule catalogue: one declarative entry per finding code.

Codes are stable: dashboards, alert rules and auditors key on them. Never reuse a retired code.
``agentgov rules`` prints this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .findings import Category, Finding, Severity

# Framework references.
ASI02 = "OWASP-ASI02 Tool Misuse and Exploitation"
ASI03 = "OWASP-ASI03 Identity and Privilege Abuse"
ASI06 = "OWASP-ASI06 Memory and Context Poisoning"
ASI07 = "OWASP-ASI07 Insecure Inter-Agent Communication"
ASI09 = "OWASP-ASI09 Human-Agent Trust Exploitation"
ASI10 = "OWASP-ASI10 Rogue Agents"
NHI1 = "OWASP-NHI1 Improper Offboarding"
NHI5 = "OWASP-NHI5 Overprivileged NHI"
NHI9 = "OWASP-NHI9 NHI Reuse"
PR_AA_01 = "NIST-CSF PR.AA-01"
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


PRIVILEGED_WITHOUT_APPROVAL = spec(
    "AG-AUTH-001", "Privileged grant without human approval", Severity.critical, Category.risk,
    "Access at a privilege tier that the policy says needs a human approval was granted with no approved_by.",
    ("action", "decision.outcome", "resource.privilege_tier", "decision.approved_by"),
    (ASI03, NHI5, PR_AA_05),
)
MODEL_FINAL_AUTHORITY = spec(
    "AG-AUTH-002", "Model held final authority over an access change", Severity.high, Category.risk,
    "The LLM's output was the final authorization of an access change: no separation of interpretation "
    "from authorization.",
    ("action", "decision.authority", "decision.outcome", "agent.model_id"),
    (ASI09, ASI03, PR_AA_05),
)
SELF_GRANT = spec(
    "AG-AUTH-003", "Self-grant", Severity.critical, Category.risk,
    "The agent granted access to itself or to the principal it acts on behalf of.",
    ("agent.agent_id", "agent.on_behalf_of", "target.identity_id", "action"),
    (ASI03, NHI5, PR_AA_05),
)
MISSING_EVIDENCE = spec(
    "AG-EVD-001", "Access change without evidence", Severity.medium, Category.evidence,
    "An access change lacks its trigger reference, the inputs it evaluated, or the policy version in force.",
    ("trigger.ref", "inputs_used", "policy.policy_version"),
    (PR_AA_05, DE_AE),
)
