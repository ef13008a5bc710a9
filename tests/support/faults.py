"""Fault injection at the ClickHouse client boundary, for outage drills against an embedded store.

chdb cannot be stopped like a server, so a drill wraps the sink's client: while a fault window is open,
every insert fails, either at once with a server-style error or after hanging for a while (a timeout).
Reads pass through, so the drill can still look at what was stored.

Example::

    faults = FaultyClient(sink.client)
    sink.client = faults
    faults.fail_for(30, kind="error")     # or kind="timeout"
"""

from __future__ import annotations

import threading
import time
from typing import Any


class InjectedServerError(Exception):
    """What a failing ClickHouse returns: an error response (e.g. code 242, TABLE_IS_READ_ONLY)."""


class InjectedTimeout(TimeoutError):
    """What a hung ClickHouse looks like: the request outlives the client's timeout."""


class FaultyClient:
    """Wraps a clickhouse-connect client; inserts fail while a fault window is open."""

    def __init__(self, client: Any, *, hang_seconds: float = 2.0) -> None:
        self._client = client
        self.hang_seconds = hang_seconds
        self._until = 0.0
        self._kind = "error"
        self._lock = threading.Lock()
        self.failures: dict[str, int] = {"error": 0, "timeout": 0}
        self.inserts = 0

    def fail_for(self, seconds: float, kind: str = "error") -> None:
        if kind not in self.failures:
            raise ValueError(kind)
        with self._lock:
            self._until = time.monotonic() + seconds
            self._kind = kind

    def heal(self) -> None:
        with self._lock:
            self._until = 0.0

    @property
    def failing(self) -> bool:
        return time.monotonic() < self._until

    def _maybe_fail(self) -> None:
        with self._lock:
            failing, kind = time.monotonic() < self._until, self._kind
        if not failing:
            return
        self.failures[kind] += 1
        if kind == "timeout":
            time.sleep(self.hang_seconds)
            raise InjectedTimeout(f"injected: no response within {self.hang_seconds}s")
        raise InjectedServerError("injected: Code: 242. DB::Exception: Table is in readonly mode")

    def raw_insert(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail()
        self.inserts += 1
        return self._client.raw_insert(*args, **kwargs)

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        self._maybe_fail()
        self.inserts += 1
        return self._client.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
