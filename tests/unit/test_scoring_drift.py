"""Drift against the agent's own baseline, with warm-up."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.scoring_cases import DRIFT_CASES
from tests.unit.scoring_factory import T0, baseline, codes, context_for, event


@pytest.mark.parametrize(("changes", "b", "code", "fires"), [c[1:] for c in DRIFT_CASES],
                         ids=[c[0] for c in DRIFT_CASES])
def test_drift(changes: dict[str, Any], b: dict[str, Any], code: str, fires: bool) -> None:
    ev = event(changes)
    assert (code in codes(ev, context_for(ev, baseline=baseline(**b)))) is fires


def test_no_baseline_no_drift() -> None:
    ev = event({"action": "remove_group_member", "resource.system": "aws"})
    assert not [c for c in codes(ev, context_for(ev)) if c.startswith("AG-DRF")]


def _burst(n: int, spacing_ms: int, **changes: Any) -> list[dict[str, Any]]:
    return [event({"run_id": f"run-{i}", "target.identity_id": f"u{i}", "occurred_at": T0 + i * spacing_ms,
                   **changes}) for i in range(n)]


RATE_CASES: list[tuple[str, int, int, float, bool]] = [
    # (id, grants, spacing ms, baseline grants/h, fires)
    ("burst", 30, 1000, 5.0, True),
    ("benign:busy-agent", 30, 1000, 20.0, False),           # 30/h is not > 3 x 20/h
    ("benign:below-minimum", 15, 1000, 0.5, False),         # 15 grants < rate_min_grants 20
    ("benign:spread-over-hours", 30, 600_000, 5.0, False),  # most fall out of the 1h window
]


@pytest.mark.parametrize(("n", "spacing", "rate", "fires"), [c[1:] for c in RATE_CASES],
                         ids=[c[0] for c in RATE_CASES])
def test_grant_rate(n: int, spacing: int, rate: float, fires: bool) -> None:
    events = _burst(n, spacing)
    ctx = context_for(events[-1], events[:-1], baseline=baseline(grants_per_hour=rate))
    assert ("AG-DRF-005" in codes(events[-1], ctx)) is fires


STALE_CASES: list[tuple[str, int, int, bool, bool]] = [
    # (id, recent decisions, of which stale, current stale, fires)
    ("mostly-stale", 12, 6, True, True),
    ("benign:one-stale-in-many", 20, 1, True, False),
    ("benign:current-approved", 12, 6, False, False),
    ("benign:too-few-decisions", 5, 5, True, False),
]


@pytest.mark.parametrize(("n", "stale", "current_stale", "fires"), [c[1:] for c in STALE_CASES],
                         ids=[c[0] for c in STALE_CASES])
def test_stale_policy_share(n: int, stale: int, current_stale: bool, fires: bool) -> None:
    history = [event({"run_id": f"run-{i}", "occurred_at": T0 + i * 1000,
                      "policy.policy_version": "2" if i < stale else "7"}) for i in range(n)]
    ev = event({"run_id": "run-now", "occurred_at": T0 + n * 1000,
                "policy.policy_version": "2" if current_stale else "7"})
    assert ("AG-DRF-006" in codes(ev, context_for(ev, history, baseline=baseline()))) is fires
