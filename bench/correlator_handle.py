"""``Correlator.handle`` per fact, decoding included, without Kafka: ``python -m bench.correlator_handle``.

Two steps, so the measured one is deterministic and does nothing but the correlator's work:

- ``make EVENTS FILE``: completes workload events (planted and cross-run chains included), stamps the benign
  ones 10,000 events/s apart in event time, and encodes their facts as the scorer does (``FactEmitter``);
  keeps the by-target and by-agent records, in the order produced, in ``FILE`` (pickle);
- ``run FILE [BATCH] [--no-handle]``: feeds the records to one correlator owning every fact partition, in
  batches of ``BATCH`` (500), through ``Correlator.handle`` (decode, early pages, release at the watermark,
  judge, apply, publish into a capturing producer), with a fake clock advancing 50 ms a batch; then releases
  what is left. Prints the facts, pages and findings, and a digest of the finding records: two versions of
  the code must print the same digest. ``--no-handle`` loads and builds the same and stops before the first
  batch: under ``valgrind --tool=callgrind`` the difference of the two counts is the correlator's, and divided
  by the facts, its instructions per fact. After each batch the young generations are collected and what
  survived frozen, as ``TransactionalLoop.process`` does (``_collect``; its full collection every 600 s of
  the machine's clock left out); ``--freeze-start-up`` first does what ``consumers._main.freeze_start_up``
  does for a role's process.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import sys
from typing import Any

from pipeline import correlator as correlator_module
from pipeline.correlator import Correlator
from pipeline.fact_reader import FactReader
from pipeline.facts import FACT, FINDING, FactEmitter, partition_for
from pipeline.limits import Limits
from pipeline.schemas import SchemaSet
from pipeline.scoring.context import AgentBaseline
from pipeline.scoring.policy import load_policy
from pipeline.serde import Serde
from pipeline.settings import Settings

GRACE_S = 2.0  # the correlation benchmark's grace (bench/correlation.py BENCH_GRACE_S)


def make(events: int, path: str) -> None:
    from pipeline.publisher import TransitionPublisher
    from pipeline.workload import Workload

    settings = Settings()
    pub = TransitionPublisher(Settings.load(kafka_bootstrap="127.0.0.1:1"))  # complete() only: never connects
    emitter = FactEmitter(settings, Serde(SchemaSet.load(), record=FACT))
    keep = {settings.topic_facts_by_target, settings.topic_facts_by_agent}
    out: list[tuple[str, int, bytes]] = []
    offsets = [0] * 6
    records = []
    for op in Workload(seed=1, planted=True, bad_inputs=False, cross_run=True).ops(events):
        if op.kind not in ("draft", "record") or op.send != "send":
            continue
        try:
            record = pub.complete(op.payload)
        except Exception:
            continue
        if op.mutate is not None:
            continue
        records.append((op.scenario, record))
    start = max(r["occurred_at"] for _, r in records) - 60_000 - len(records) // 10
    for i, (scenario, record) in enumerate(records):
        if scenario == "benign":
            record["occurred_at"] = start + i // 10
        p = partition_for(record["run_id"], 6)
        offsets[p] += 1

        def produce(topic: str, value: bytes, key: bytes | None = None, partition: int = 0) -> None:
            if topic in keep:
                out.append((topic, partition, value))
        emitter.emit(produce, record, p, offsets[p])
    with open(path, "wb") as f:
        pickle.dump(out, f)
    print(f"{len(records):,} events -> {len(out):,} fact records in {path}")


class Clock:
    """What the correlator reads of ``time``: a clock advanced by the harness, not the machine's."""

    def __init__(self, wall: float) -> None:
        self.wall, self.mono = wall, 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class Msg:
    __slots__ = ("_offset", "_partition", "_topic", "_value")

    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self._topic, self._partition, self._offset, self._value = topic, partition, offset, value

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, **_: Any) -> None:
        self.sent.append((topic, value, key))


class Ring:
    def __init__(self) -> None:
        self.pages: list[Any] = []

    def set(self, series: Any, now: float) -> None:
        self.pages.append(series)


class Errors:
    def inc(self) -> None:
        raise AssertionError("a cross-run rule raised")


def correlator(settings: Settings) -> Any:
    c: Any = Correlator.__new__(Correlator)  # no consumer, no producer, no graph follower
    schemas = SchemaSet.load()
    c.settings, c.limits, c.states, c._edges_known = settings, Limits.from_settings(settings), {}, {}
    c._sources = 6
    c.policy, c.scorer_window_ms = load_policy(None), settings.context_window_seconds * 1000
    c.facts = Serde(schemas, record=FACT)
    c.reader = FactReader(c.facts)
    c.out = Serde(schemas, record=FINDING)
    c.graph = type("NoEdges", (), {"read": 0, "position": 0, "into": staticmethod(lambda agent: []),
                                   "sync": staticmethod(lambda high, seconds: True)})()
    c.consumer = type("Consumer", (), {"get_watermark_offsets": staticmethod(lambda tp, **_: (0, 0))})()
    busy = AgentBaseline("any", events=1000, grants_per_hour=500.0)
    c.baselines = lambda key: busy
    c.grace_ms = int(GRACE_S * 1000)
    c.retain_ms = settings.correlation_retain_seconds * 1000
    c._next_flush = 0.0
    c.checkpoint = type("Checkpoint", (), {"producer": Sink()})()
    c.metrics = type("Metrics", (), {"escalation_ring": Ring(), "correlator_rule_errors": Errors()})()
    return c


def run(path: str, batch: int, handle: bool, freeze: bool = False) -> None:
    with open(path, "rb") as f:
        records: list[tuple[str, int, bytes]] = pickle.load(f)
    # The fake clock starts at the first fact's time, and facts further ahead of the clock than the skew are
    # refused (limits.check_fact_time): the planted chains reach 30 days back, so the skew covers the stream.
    settings = Settings(max_future_skew_seconds=400 * 86_400)
    c = correlator(settings)
    ends: dict[tuple[str, int], int] = {}
    msgs = []
    for topic, partition, value in records:
        offset = ends.get((topic, partition), 0)
        ends[(topic, partition)] = offset + 1
        msgs.append(Msg(topic, partition, offset, value))
    first = c.reader.read(msgs[0].value())["occurred_at"] / 1000
    clock = Clock(first)
    correlator_module.time = clock  # type: ignore[assignment]
    if not handle:
        return
    if freeze:
        from consumers._main import freeze_start_up
        freeze_start_up()
    c._next_full_gc = float("inf")  # the full collection every GC_FULL_EVERY_SECONDS of the machine's clock: none
    facts = found = 0
    for i in range(0, len(msgs), batch):
        tally = c.handle(msgs[i:i + batch])
        c._collect()  # after each batch, as TransactionalLoop.process does
        facts += tally.facts
        found += len(tally.found)
        clock.tick(0.05)
    for state in c.states.values():  # the end of the stream: release what is left
        out, _ = state.judge_due(1 << 62, c.retain_ms, functools.partial(c._guarded, c._judge, state),
                                 rejudge=functools.partial(c._rejudge, state))
        for f in out:
            c._publish(f, int(clock.wall * 1000), type("T", (), {"found": []})())
            found += 1
    sent = c.checkpoint.producer.sent
    digest = hashlib.sha256()
    for topic, value, key in sorted(sent, key=lambda s: (s[2] or b"", s[1])):
        digest.update(topic.encode() + b"\0" + (key or b"") + b"\0" + value)
    pages = sorted(map(repr, c.metrics.escalation_ring.pages))
    print(f"facts {facts:,}  findings {found:,}  records {len(sent):,}  pages {len(pages):,}")
    print(f"findings digest {digest.hexdigest()}")
    print(f"pages digest {hashlib.sha256(repr(pages).encode()).hexdigest()}")


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "make":
        make(int(args[1]), args[2])
    elif args and args[0] == "run":
        rest = [a for a in args[2:] if not a.startswith("--")]
        run(args[1], int(rest[0]) if rest else 500, "--no-handle" not in args, "--freeze-start-up" in args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
