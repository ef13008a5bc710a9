"""Run every rule on one event and fold the findings into an assessment. Pure.

The rules are :data:`~pipeline.scoring.catalogue.RULES`, registered by ``@rule`` in the rule modules
(``pipeline.scoring`` imports them all). Order is the order findings appear in an assessment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..events import TransitionDict
from .catalogue import RULES, Rule
from .context import ScoringContext
from .findings import Finding, risk_level, risk_score


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
