"""Failed logins per client address, and when an address must wait before it may try a token again.

Token mode answers every wrong token with 401; without a limit nothing stopped a client from trying
thousands a minute. After ``max_failures`` within ``window`` seconds, an address is refused (429, with the
seconds to wait) until its oldest failure in the window is ``window`` seconds old. Memory is bounded: at most
``max_addresses`` addresses are tracked, the one whose last failure is oldest is forgotten first.

Checking and counting are one step (:meth:`FailureThrottle.reserve`): an attempt let through is counted as a
failure at once, and a right token gives its reservation back (:meth:`FailureThrottle.release`). Checking
first and counting when the token turned out wrong let a burst through: the login form's token is checked in
the thread pool, after the check, so 400 concurrent wrong tokens were all checked against a limit of 3.

Pure: callers pass the time (``time.monotonic()``), so the rule is tested with a table of times.

Example::

    throttle = FailureThrottle(max_failures=10, window=60.0, max_addresses=10_000)
    if (wait := throttle.reserve("10.0.0.7", now)) is not None:
        ...  # 429, Retry-After: ceil(wait)
    elif token_is_right:
        throttle.release("10.0.0.7", now)
"""

from __future__ import annotations

import threading
from collections import deque


class FailureThrottle:
    """Sliding-window count of failures per address; thread-safe."""

    def __init__(self, *, max_failures: int, window: float, max_addresses: int) -> None:
        if max_failures < 1 or window <= 0 or max_addresses < 1:
            raise ValueError("max_failures, window and max_addresses must be positive")
        self.max_failures, self.window, self.max_addresses = max_failures, window, max_addresses
        self._failures: dict[str, deque[float]] = {}  # address -> its recent failure times, oldest first
        self._lock = threading.Lock()

    def _recent(self, addr: str, now: float) -> deque[float] | None:
        times = self._failures.get(addr)
        while times and now - times[0] >= self.window:
            times.popleft()
        if times is not None and not times:
            del self._failures[addr]
            return None
        return times

    def retry_after(self, addr: str, now: float) -> float | None:
        """Seconds ``addr`` must still wait, or None when it may try."""
        with self._lock:
            times = self._recent(addr, now)
            if times is None or len(times) < self.max_failures:
                return None
            return times[0] + self.window - now

    def fail(self, addr: str, now: float) -> int:
        """Record a failed login from ``addr``; returns its failures within the window."""
        with self._lock:
            return self._add(addr, now)

    def reserve(self, addr: str, now: float) -> float | None:
        """Check and count in one step: the seconds ``addr`` must still wait (nothing counted), or None when it
        may try, its try counted as a failure at ``now`` until :meth:`release` gives it back."""
        with self._lock:
            times = self._recent(addr, now)
            if times is not None and len(times) >= self.max_failures:
                return times[0] + self.window - now
            self._add(addr, now)
            return None

    def release(self, addr: str, at: float) -> None:
        """Give back the reservation ``reserve(addr, at)`` took: the token was right (or not a token)."""
        with self._lock:
            times = self._failures.get(addr)
            if times is not None and at in times:
                times.remove(at)
                if not times:
                    del self._failures[addr]

    def failures(self, addr: str, now: float) -> int:
        """Failures (and reservations) of ``addr`` within the window."""
        with self._lock:
            times = self._recent(addr, now)
            return 0 if times is None else len(times)

    def _add(self, addr: str, now: float) -> int:
        times = self._recent(addr, now)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                del self._failures[next(iter(self._failures))]  # the least recently failing address
            times = self._failures[addr] = deque(maxlen=self.max_failures)
        else:
            self._failures[addr] = self._failures.pop(addr)  # most recently failing last
        times.append(now)
        return len(times)

    def __len__(self) -> int:
        return len(self._failures)
