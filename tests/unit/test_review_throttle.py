"""Failed logins per client address: the sliding window, the wait it answers, and its bounded memory."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.review.throttle import FailureThrottle


def test_an_address_waits_after_its_failures_until_the_oldest_leaves_the_window() -> None:
    t = FailureThrottle(max_failures=3, window=60.0, max_addresses=100)
    for now in (0.0, 10.0, 20.0):
        assert t.retry_after("a", now) is None
        t.fail("a", now)
    assert t.retry_after("a", 20.0) == 40.0  # the failure at 0 leaves the window at 60
    assert t.retry_after("a", 59.0) == 1.0
    assert t.retry_after("b", 30.0) is None  # per address
    assert t.retry_after("a", 60.0) is None  # one failure left the window: one more try
    assert t.fail("a", 60.0) == 3 and t.retry_after("a", 60.0) == 10.0
    assert t.retry_after("a", 200.0) is None and len(t) == 0  # all of them old: forgotten


def test_memory_is_bounded_forgetting_the_least_recently_failing_address() -> None:
    t = FailureThrottle(max_failures=2, window=60.0, max_addresses=3)
    for i, addr in enumerate(("a", "b", "c")):
        t.fail(addr, float(i))
        t.fail(addr, float(i))
    t.fail("a", 5.0)  # a failed most recently: b is now the oldest
    t.fail("d", 6.0)
    assert len(t) == 3
    assert t.retry_after("b", 7.0) is None  # forgotten
    assert t.retry_after("a", 7.0) is not None and t.retry_after("c", 7.0) is not None


@pytest.mark.parametrize("kw", [{"max_failures": 0}, {"window": 0.0}, {"max_addresses": 0}])
def test_limits_are_positive(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        FailureThrottle(**{"max_failures": 3, "window": 60.0, "max_addresses": 10, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("steps", "failures"), [
    # (op, time, reserve's answer: the wait or None), then the failures counted at the last step's time
    ([("reserve", 0.0, None), ("reserve", 1.0, None), ("reserve", 2.0, None), ("reserve", 3.0, 57.0)], 3),
    # a right token gives its reservation back: the address may try again at once
    ([("reserve", 0.0, None), ("release", 0.0, None), ("reserve", 1.0, None), ("reserve", 2.0, None),
      ("reserve", 3.0, None), ("reserve", 4.0, 57.0)], 3),
    # releasing a reservation that left the window, or one never taken, changes nothing
    ([("reserve", 0.0, None), ("reserve", 70.0, None), ("release", 0.0, None), ("release", 71.0, None)], 1),
    # a refused attempt is not counted: the wait runs from the oldest reservation, not the refusals
    ([("reserve", 0.0, None), ("reserve", 0.0, None), ("reserve", 0.0, None), ("reserve", 30.0, 30.0),
      ("reserve", 59.0, 1.0), ("reserve", 60.0, None)], 1),
])
def test_reserve_checks_and_counts_in_one_step(steps: list[tuple[str, float, float | None]], failures: int
                                               ) -> None:
    t = FailureThrottle(max_failures=3, window=60.0, max_addresses=100)
    for op, now, wait in steps:
        if op == "reserve":
            assert t.reserve("a", now) == wait, (op, now)
        else:
            t.release("a", now)
    assert t.failures("a", steps[-1][1]) == failures
    assert t.failures("b", 0.0) == 0


def test_concurrent_reservations_never_pass_the_limit() -> None:
    """Check-and-count under one lock: of 64 threads trying at once, exactly max_failures get through."""
    t = FailureThrottle(max_failures=3, window=60.0, max_addresses=100)
    start = threading.Barrier(64)

    def attempt(_i: int) -> bool:
        start.wait()
        return t.reserve("a", 1.0) is None

    with ThreadPoolExecutor(64) as pool:
        assert sum(pool.map(attempt, range(64))) == 3
