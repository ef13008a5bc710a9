"""Live progress of a stream through the pipeline: published, scored and stored counts, rates and an ETA.

On a terminal it is a rich display redrawn in place; elsewhere (CI, a pipe, a log file) a plain line
every ``every`` seconds, so a log shows it is alive without drowning in carriage returns.

The scored count is the scorers' own progress, read from the broker: the scorer group's committed
offsets on the transitions topic (scorers commit them inside each batch's transaction). It moves every
scorer batch, long before the writer's first insert moves the stored count.

Example::

    with StreamProgress(total=50_000, counts=lambda: Counts(published=n, scored=probe.scored(),
                                                           stored=probe.stored())):
        ...                                   # publish; a thread polls ``counts`` and redraws
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TextIO

from confluent_kafka import Consumer, TopicPartition
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from .settings import Settings

STAGES = ("published", "scored", "stored")


@dataclass(frozen=True)
class Counts:
    published: int = 0
    scored: int | None = None  # None: not known (no probe)
    stored: int | None = None


class PipelineProbe:
    """How many transitions the scorers have handled (and the writer stored) since this probe was made,
    read from the broker, for a process that runs neither (``agentgov publish``).

    Two readings, the larger wins: the scorer group's committed offsets on the transitions topic (exact,
    but a broker may withhold them while transactions are open, as Tansu does under load), and the high
    watermarks of the topics scorers write (assessments and dead letters), read uncommitted so they move
    with every batch; those count one control record per transaction and partition, so they run a
    fraction of a percent ahead until the commits catch up. Neither joins the group."""

    def __init__(self, settings: Settings, group: str | None = None) -> None:
        self.topic = settings.topic_transitions
        # read_uncommitted: a read_committed client asks for "stable" offsets (KIP-447) and gets the last
        # stable offset instead of the high watermark.
        self.consumer = Consumer(settings.consumer_config(
            group or settings.scorer_group, **{"client.id": f"agentgov-progress-{uuid.uuid4().hex[:8]}",
                                               "isolation.level": "read_uncommitted", "log_level": 0}))
        self.inputs = self._partitions(self.topic)
        self.outputs = self._partitions(settings.topic_assessments) + self._partitions(settings.topic_dlq)
        self.writer_group = settings.writer_group
        self.writer = Consumer(settings.consumer_config(
            settings.writer_group, **{"client.id": f"agentgov-progress-{uuid.uuid4().hex[:8]}",
                                      "isolation.level": "read_uncommitted", "log_level": 0}))
        self.assessments = self._partitions(settings.topic_assessments)
        self.base = (self._committed(), self._written(), self._stored())

    def _partitions(self, topic: str) -> list[TopicPartition]:
        meta = self.consumer.list_topics(topic, timeout=10).topics.get(topic)
        return [TopicPartition(topic, p) for p in sorted(meta.partitions)] if meta else []

    def _committed(self) -> int:
        if not self.inputs:
            return 0
        return sum(max(0, tp.offset) for tp in self.consumer.committed(self.inputs, timeout=5))

    def _written(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=2, cached=False)[1] for tp in self.outputs)

    def _stored(self) -> int:
        if not self.assessments:
            return 0
        return sum(max(0, tp.offset) for tp in self.writer.committed(self.assessments, timeout=5))

    def stored(self) -> int | None:
        """The writer group's committed offsets on the assessments topic: the writer commits only what the
        store holds. Offsets count transaction markers too, so this runs slightly ahead of the rows."""
        try:
            return max(0, self._stored() - self.base[2])
        except Exception:
            return None

    def scored(self) -> int | None:
        try:
            return max(0, self._committed() - self.base[0], self._written() - self.base[1])
        except Exception:  # a slow broker must not stop the display; the next poll tries again
            return None

    def close(self) -> None:
        self.consumer.close()
        self.writer.close()


class _Rate:
    """Events per second over the last ``window`` seconds."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, value: int) -> float:
        self.samples.append((now, value))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window:
            self.samples.popleft()
        t0, v0 = self.samples[0]
        return (value - v0) / (now - t0) if now > t0 else 0.0


class _CountColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{int(task.completed):>10,}/{int(task.total or 0):,}", style="progress.download")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate", 0.0)
        return Text(f"{rate:>8,.0f}/s", style="progress.data.speed")


class StreamProgress:
    """Polls ``counts`` every ``interval`` seconds in a thread and shows it (see the module docstring)."""

    def __init__(self, total: int, counts: Callable[[], Counts], *, stored_total: int | None = None,
                 out: TextIO | None = None, interval: float = 0.5, every: float = 5.0, title: str = "") -> None:
        self.total = total
        self.totals = {"published": total, "scored": total, "stored": stored_total if stored_total else total}
        self.counts = counts
        self.out = out if out is not None else sys.stderr
        self.interval = interval
        self.every = every
        self.title = title
        self.tty = self.out.isatty()
        self.rates = {stage: _Rate() for stage in STAGES}
        self.last: dict[str, int | None] = dict.fromkeys(STAGES)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_line = float("-inf")  # the first poll prints
        self._rich: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._rerouted: list[logging.StreamHandler] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> StreamProgress:
        self.started = time.monotonic()
        if self.tty:
            self._rich = Progress(
                TextColumn("{task.description:<10}"), BarColumn(bar_width=30), _CountColumn(),
                _RateColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=Console(file=self.out), refresh_per_second=4, transient=False)
            for stage in STAGES:
                self._tasks[stage] = self._rich.add_task(stage, total=self.totals[stage], rate=0.0)
            self._rich.start()
            # rich now proxies sys.stderr to print above the display; send log lines through it too
            for handler in logging.getLogger().handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is self.out:
                    self._rerouted.append(handler)
                    handler.setStream(sys.stderr)
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.poll(final=True)
        if self._rich is not None:
            self._rich.stop()
            for handler in self._rerouted:
                handler.setStream(self.out)

    def __enter__(self) -> StreamProgress:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- one refresh ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self, final: bool = False) -> None:
        """Read the counts once and show them (a plain line only every ``every`` seconds, or when final)."""
        counts = self.counts()
        now = time.monotonic()
        shown: dict[str, tuple[int, float] | None] = {}
        for stage in STAGES:
            value = getattr(counts, stage)
            if value is not None:
                value = min(value, self.totals[stage])
            if value is None:
                value = self.last[stage]  # keep the last known value through a failed read
            self.last[stage] = value
            shown[stage] = None if value is None else (value, self.rates[stage].add(now, value))
        if self._rich is not None:
            for stage, got in shown.items():
                if got is not None:
                    self._rich.update(self._tasks[stage], completed=got[0], rate=got[1])
            return
        if final or now - self._last_line >= self.every:
            self._last_line = now
            self.out.write(self.line(shown, now - self.started) + "\n")
            self.out.flush()

    def eta(self, shown: dict[str, tuple[int, float] | None]) -> float | None:
        """Seconds until the last known stage is complete, at the rate of the latest stage that is moving
        (before the writer's first batch, the scorers' rate)."""
        known = [s for s in STAGES if shown.get(s) is not None]
        if not known:
            return None
        value, _ = shown[known[-1]] or (0, 0.0)
        left = self.totals[known[-1]] - value
        if left <= 0:
            return 0
        rate = next((got[1] for s in reversed(known) if (got := shown[s]) is not None and got[1] > 0), 0.0)
        return left / rate if rate > 0 else None

    def line(self, shown: dict[str, tuple[int, float] | None], elapsed: float) -> str:
        """The plain form: ``published 12,000/50,000 (5,100/s)  scored ...  stored ...  eta 8s``."""
        parts = []
        for stage, got in shown.items():
            if got is not None:
                parts.append(f"{stage} {got[0]:,}/{self.totals[stage]:,} ({got[1]:,.0f}/s)")
        parts.append(f"elapsed {elapsed:.0f}s")
        eta = self.eta(shown)
        if eta is not None:
            parts.append("done" if eta == 0 else f"eta {eta:.0f}s")
        return (self.title + "  " if self.title else "") + "  ".join(parts)
