"""PartitionContext.runs_complete: when a run missing from the context can be said to have no earlier step."""

from __future__ import annotations

from pipeline.state import PartitionContext
from tests.unit.scoring_factory import event

WINDOW = 3_600_000


def test_unknown_until_the_scorer_says_from_when() -> None:
    ctx = PartitionContext(WINDOW)
    assert not ctx.runs_complete(10 * WINDOW)


def test_complete_from_the_log_start_at_once() -> None:
    ctx = PartitionContext(WINDOW)
    ctx.complete_from_ms = 0
    assert ctx.runs_complete(1)


def test_complete_once_a_whole_window_is_covered() -> None:
    """After a replay of the window before the committed offset (a restart or a rebalance), every run with
    a step in that window is held again: complete at once for events after it, never before a window."""
    ctx = PartitionContext(WINDOW)
    ctx.complete_from_ms = 5_000_000
    assert not ctx.runs_complete(5_000_000 + WINDOW - 1)
    assert ctx.runs_complete(5_000_000 + WINDOW)


def test_an_eviction_restarts_the_window() -> None:
    ctx = PartitionContext(WINDOW, max_keys=2)
    ctx.complete_from_ms = 0
    for i in range(3):  # the third run evicts the first
        ctx.observe(event({"run_id": f"run-{i}", "target.identity_id": "u1", "agent.agent_id": "a1"}))
    t = 9 * WINDOW
    assert not ctx.runs_complete(t)  # run-0 may come back at step 1: it is no longer held
    assert not ctx.runs_complete(t + WINDOW - 1)
    assert ctx.runs_complete(t + WINDOW)


def test_window_zero_is_complete_only_from_the_log_start() -> None:
    ctx = PartitionContext(0)
    ctx.complete_from_ms = 1
    assert not ctx.runs_complete(10**12)
    ctx.complete_from_ms = 0
    assert ctx.runs_complete(10**12)
