"""Run every rule on one event and fold the findings into an assessment. Pure.

``RULES`` is the whole catalogue, grouped by concept. Order is the order findings appear in an assessment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..events import TransitionDict
from .boundary import BOUNDARY_RULES
from .context import ScoringContext
from .drift import DRIFT_RULES
from .escalation import ESCALATION_RULES
from .evidence import EVIDENCE_RULES
from .findings import Finding, risk_level, risk_score
from .lifecycle import LIFECYCLE_RULES
from .rules import AUTHORITY_RULES, Rule
from .sod import SOD_RULES

RULES: tuple[Rule, ...] = (
    *AUTHORITY_RULES, *BOUNDARY_RULES, *LIFECYCLE_RULES, *EVIDENCE_RULES, *SOD_RULES, *DRIFT_RULES,
    *ESCALATION_RULES,
)


@dataclass(frozen=True, slots=True)
class Scored:
    """The rules' verdict on one event."""

    findings: tuple[Finding, ...]
    risk_score: int
    risk_level: str


def score(ev: TransitionDict, ctx: ScoringContext, rules: Iterable[Rule] = RULES) -> Scored:
    findings: list[Finding] = []
    for rule in rules:
        findings.extend(rule(ev, ctx))
    value = risk_score(findings)
    return Scored(tuple(findings), value, risk_level(value))
