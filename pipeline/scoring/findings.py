"""The Finding type and the documented rule that turns findings into a risk score and level.

Risk score: each finding weighs by severity (info 0, low 10, medium 25, high 50, critical 80); the
score is the sum, capped at 100. Level bands: 0 none, 1-24 low, 25-49 medium, 50-79 high, 80-100 critical.
So one critical finding alone makes a critical assessment, two highs make a critical one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class Category(StrEnum):
    risk = "risk"
    drift = "drift"
    escalation = "escalation"
    evidence = "evidence"


WEIGHTS = {Severity.info: 0, Severity.low: 10, Severity.medium: 25, Severity.high: 50, Severity.critical: 80}
LEVELS = ("none", "low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class Finding:
    """One explainable result of one rule on one event."""

    code: str
    severity: Severity
    category: Category
    message: str
    evidence_fields: tuple[str, ...]
    refs: tuple[str, ...]
    related_event_ids: tuple[str, ...] = ()
    # Set by the scorer when an approved risk exception covers the finding (pipeline/risk_exceptions.py).
    exception_id: str | None = None
    exception_version: int | None = None

    def to_avro(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "category": self.category.value,
            "message": self.message,
            "evidence_fields": list(self.evidence_fields),
            "refs": list(self.refs),
            "related_event_ids": list(self.related_event_ids),
            "exception_id": self.exception_id,
            "exception_version": self.exception_version,
        }


def risk_score(findings: Iterable[Finding]) -> int:
    return min(100, sum(WEIGHTS[f.severity] for f in findings))


def risk_level(score: int) -> str:
    if score <= 0:
        return "none"
    if score < 25:
        return "low"
    if score < 50:
        return "medium"
    if score < 80:
        return "high"
    return "critical"
