"""The rule catalogue and registry: every finding code's entry, and every rule that emits them.

A rule module declares each code with :func:`spec` and registers the function beside it with :func:`rule`;
that is the only place a rule is written down. The engine runs :data:`RULES`, ``agentgov rules`` prints
:data:`CATALOGUE` (:func:`render_catalogue`) and docs/rules.md is generated from it. Importing
``pipeline.scoring`` imports every rule module, so both are complete whichever module is imported first.

Codes are stable: dashboards, alert rules and auditors key on them. Never reuse a retired code.

Example::

    SELF_GRANT.finding("agent 'a' granted grant_entitlement to itself")   # -> Finding
    print(render_catalogue("markdown"))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from ..events import TransitionDict
from .context import ScoringContext
from .findings import Category, Finding, Severity

Rule = Callable[[TransitionDict, ScoringContext], list[Finding]]
"""A rule is a pure function ``(event, context) -> findings``: no I/O, no globals, no clock."""

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
    pattern: str | None = None
    """Escalation codes only: the pattern name, a closed set used as the ``pattern`` metric label."""

    def finding(self, message: str, related: tuple[str, ...] = ()) -> Finding:
        return Finding(self.code, self.severity, self.category, message, self.evidence_fields, self.refs, related)


CATALOGUE: dict[str, RuleSpec] = {}
ESCALATION_PATTERNS: dict[str, str] = {}
"""Escalation code -> pattern name, filled by :func:`spec`. A closed set: used as the ``pattern`` metric label."""
RULES: list[Rule] = []
"""Every per-event rule, in registration order: the order findings appear in an assessment. Filled by
:func:`rule`; :func:`pipeline.scoring.engine.score` runs them."""


def spec(
    code: str, title: str, severity: Severity, category: Category, meaning: str,
    evidence_fields: tuple[str, ...], refs: tuple[str, ...], *, pattern: str | None = None,
) -> RuleSpec:
    """Declare a finding code: its catalogue entry, which ``agentgov rules`` and docs/rules.md render."""
    if code in CATALOGUE:
        raise ValueError(f"duplicate finding code {code}")
    entry = RuleSpec(code, title, severity, category, meaning, evidence_fields, refs, pattern)
    CATALOGUE[code] = entry
    if pattern:
        ESCALATION_PATTERNS[code] = pattern
    return entry


def rule(*specs: RuleSpec) -> Callable[[Rule], Rule]:
    """Register a per-event rule that emits ``specs``: the engine runs it on every event.

    Example::

        SELF_GRANT = spec("AG-AUTH-003", "Self-grant", S.critical, C.risk, "...", ("action",), (ASI03, PR_AA_05))

        @rule(SELF_GRANT)
        def self_grant(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
            return [SELF_GRANT.finding("...")] if ... else []
    """
    for s in specs:
        if CATALOGUE.get(s.code) is not s:
            raise ValueError(f"rule emits {s.code}, which is not declared with spec()")

    def register(fn: Rule) -> Rule:
        if fn in RULES:
            raise ValueError(f"rule {fn.__name__} registered twice")
        RULES.append(fn)
        return fn

    return register


S, C = Severity, Category


def _as_dict(s: RuleSpec) -> dict[str, object]:
    return {"code": s.code, "severity": s.severity.value, "category": s.category.value, "title": s.title,
            "meaning": s.meaning, "evidence_fields": list(s.evidence_fields), "refs": list(s.refs),
            "pattern": s.pattern}


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
        "<!-- Generated by `agentgov rules --format markdown` down to the end marker; do not edit by hand. -->",
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
        if s.pattern:
            out.append(f"- Escalation pattern: `{s.pattern}`")
        out.append(f"- Evidence fields: {', '.join(f'`{f}`' for f in s.evidence_fields)}")
        out.append(f"- References: {'; '.join(s.refs)}")
    return "\n".join([*out, "", MARKDOWN_END]) + "\n"


MARKDOWN_END = "<!-- End of the generated catalogue. Hand-written below: the guide to adding a rule. -->"
"""docs/rules.md is the generated catalogue up to this line, then the hand-written guide."""
