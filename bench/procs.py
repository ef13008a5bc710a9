"""Child processes of the benchmark and their peak resident memory (psutil, children included)."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from pipeline.process import ChildProcess


def role_of(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    for needle, role in (("consumers.scorer", "scorer"), ("consumers.correlator", "correlator"),
                         ("bench.agentgov_run", "agentgov-runner+writer"),
                         ("bench.quix_peer", "quix-app"), ("bench.ceiling", "ceiling"), ("tansu", "tansu-broker"),
                         ("-m bench", "bench-driver")):
        if needle in cmd:
            return role
    return proc.name()


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy (all processes, all cores) since boot."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class RssSampler:
    """Samples the RSS and CPU time of a set of root processes and all their descendants every
    ``interval`` seconds.

    ``peaks`` maps "role[pid]" to peak bytes; ``cpu`` maps it to CPU-seconds used so far."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.roots: list[int] = []
        self.peaks: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)
        self._cache: dict[int, tuple[psutil.Process, str]] = {}

    def watch(self, pid: int) -> None:
        self.roots.append(pid)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def _key(self, proc: psutil.Process) -> str:
        hit = self._cache.get(proc.pid)
        if hit is None:  # the role is read once, while the process is surely alive
            hit = self._cache[proc.pid] = (proc, f"{role_of(proc)}[{proc.pid}]")
        return hit[1]

    def sample(self) -> None:
        for root in list(self.roots):
            try:
                top = self._cache[root][0] if root in self._cache else psutil.Process(root)
                procs = [top, *top.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for proc in procs:
                try:
                    key = self._key(proc)
                    rss = proc.memory_info().rss
                    times = proc.cpu_times()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                self.cpu[key] = times.user + times.system
                if rss > self.peaks.get(key, 0):
                    self.peaks[key] = rss

    def window(self) -> CpuWindow:
        """Start accounting CPU for one scenario."""
        self.sample()
        return CpuWindow(self, dict(self.cpu), machine_busy_seconds())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


class CpuWindow:
    """CPU-seconds used by each watched process, and by the rest of the machine, over one scenario."""

    def __init__(self, sampler: RssSampler, before: dict[str, float], busy: float) -> None:
        self.sampler, self.before, self.busy = sampler, before, busy

    def close(self) -> dict[str, float]:
        self.sampler.sample()
        ours = {k: round(v - self.before.get(k, 0.0), 2) for k, v in self.sampler.cpu.items()
                if v - self.before.get(k, 0.0) > 0.05}
        busy = machine_busy_seconds() - self.busy
        ours["other_processes_on_the_machine"] = round(max(0.0, busy - sum(ours.values())), 2)
        return ours


class Child:
    """A ``python -m <module> spec.json`` worker answering one JSON line per command on stdin."""

    def __init__(self, module: str, spec: dict[str, Any], workdir: Path, name: str) -> None:
        path = workdir / f"{name}.spec.json"
        path.write_text(json.dumps(spec, default=str))
        self.proc = ChildProcess([sys.executable, "-m", module, path], log_path=workdir / f"{name}.log",
                                 pipes=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ask(self, command: str, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Send one command and return its answer; ``{"progress": ...}`` lines before it go to ``on_progress``."""
        popen = self.proc.proc
        assert popen is not None and popen.stdin is not None and popen.stdout is not None
        popen.stdin.write(command + "\n")
        popen.stdin.flush()
        while True:
            line = popen.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark worker {self.proc.argv} exited ({self.proc.wait()}): "
                                   f"{self.proc.tail(10)}")
            doc = dict(json.loads(line))
            if "progress" not in doc:
                return doc
            if on_progress is not None:
                on_progress(doc["progress"])

    def close(self, timeout: float = 60) -> None:
        """Close its stdin (the worker's cue to finish), wait up to ``timeout``, then kill."""
        popen = self.proc.proc
        if popen is not None and popen.stdin is not None:
            popen.stdin.close()
        self.proc.stop(grace=timeout, sig=None)
