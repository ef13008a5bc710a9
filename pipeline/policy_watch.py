"""Picks up a changed governance policy file between batches, without losing events.

A file that no longer validates is logged and ignored: the scorer keeps the last good policy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .errors import ConfigError
from .scoring.policy import LoadedPolicy, default_policy_path, load_policy

log = logging.getLogger(__name__)


class PolicyWatcher:
    """``poll()`` returns a new :class:`LoadedPolicy` when the file's content changed, else None.

    Example::

        watcher = PolicyWatcher(path, current)
        if (new := watcher.poll()) is not None:
            scorer.set_policy(new)
    """

    def __init__(self, path: Path | None, current: LoadedPolicy, interval: float = 2.0) -> None:
        self.path = path or default_policy_path()
        self.current = current
        self.interval = interval
        self._next = time.monotonic() + interval
        self._stamp = self._stat()

    def _stat(self) -> tuple[float, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def poll(self) -> LoadedPolicy | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.interval
        stamp = self._stat()
        if stamp == self._stamp or stamp is None:
            return None
        self._stamp = stamp
        try:
            loaded = load_policy(self.path)
        except ConfigError as exc:
            log.error("policy file changed but is invalid; keeping the previous policy",
                      extra={"kv": {"path": str(self.path), "error": exc.message, "kept": self.current.version}})
            return None
        if loaded.sha256 == self.current.sha256:
            return None
        self.current = loaded
        return loaded
