"""One supervised child process: started with its output appended to a log file, stopped with SIGTERM and
a grace period, then SIGKILL. The embedded broker, the scorer and correlator subprocesses of ``agentgov
run``, the tests' ``kill -9`` drill and the benchmark's workers all run through it.

Example::

    child = ChildProcess([sys.executable, "-m", "consumers.scorer"], env=env, log_path=logs / "scorer-0.log")
    child.start()
    child.alive()              # True while it runs
    code = child.stop(grace=20)  # SIGTERM, up to 20 s, then SIGKILL; the exit code, None if it had to be killed
    print(child.tail())        # the last lines of its log, for an error message
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any


class ChildProcess:
    """A child process with a log file, restartable with the same command and environment.

    Output (stdout and stderr) is appended to ``log_path``; without one it is discarded, or with
    ``inherit_output`` left on the parent's. ``pipes`` opens stdin and stdout as text pipes for a line
    protocol; stderr then goes to the log."""

    def __init__(self, argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None,
                 log_path: Path | None = None, inherit_output: bool = False, pipes: bool = False,
                 **popen: Any) -> None:
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.inherit_output = inherit_output
        self.pipes = pipes
        self.popen = popen  # extra Popen arguments (preexec_fn, start_new_session, ...)
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0
        self._log: IO[bytes] | None = None

    def start(self) -> ChildProcess:
        """Start (or start again after it exited) with the same command, environment and log."""
        self._close_log()
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 (closed by _close_log)
        quiet = None if self.inherit_output else subprocess.DEVNULL
        stdin: int | None = None
        stdout: IO[bytes] | int | None = self._log or quiet
        stderr: IO[bytes] | int | None = subprocess.STDOUT if self._log else quiet
        if self.pipes:  # a line protocol on stdin/stdout; the log gets stderr only
            stdin, stdout, stderr = subprocess.PIPE, subprocess.PIPE, self._log or quiet
        self.proc = subprocess.Popen(self.argv, env=self.env, stdin=stdin, stdout=stdout, stderr=stderr,
                                     text=self.pipes, **self.popen)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.argv[0]} was not started")
        return self.proc.pid

    def poll(self) -> int | None:
        """The exit code, or None while it runs (or before it started)."""
        return self.proc.poll() if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` if it runs (SIGSTOP/SIGCONT to pause and resume it, for the outage tests)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM without waiting (to stop several children at once, then :meth:`stop` each)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> bool:
        """SIGKILL and reap: no flush, no commit, no goodbye. True if it was running."""
        if not self.alive():
            return False
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        return True

    def stop(self, grace: float = 30.0, *, sig: signal.Signals | None = signal.SIGTERM) -> int | None:
        """Send ``sig`` (None: send nothing, e.g. after closing its stdin), wait up to ``grace`` seconds,
        then SIGKILL. Returns the exit code, None if it had to be killed (or never started)."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                if sig is not None:
                    self.proc.send_signal(sig)
                try:
                    return self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.kill()
                    return None
            return self.proc.returncode
        finally:
            self._close_log()

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.argv[0]} was not started")
        return self.proc.wait(timeout)

    def tail(self, lines: int = 40, max_bytes: int = 64_000) -> str:
        """The last ``lines`` lines of the log ("" without a log file)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        state = "not started" if self.proc is None else (f"pid {self.proc.pid}" if self.alive()
                                                          else f"exited {self.proc.returncode}")
        return f"ChildProcess({' '.join(self.argv[-2:])}, {state})"
