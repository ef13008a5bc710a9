"""Correlator judging rate and state size, without Kafka: ``python -m bench.correlator_judge [EVENTS]``.

Completes benign workload events with the SDK, turns the access changes into facts, and runs them
through :class:`pipeline.keyed_state.KeyedState` and the AG-XRN rules the way ``Correlator.handle`` does
(release in event-time order, judge, apply), once keyed by target and once by agent. Prints facts/s per
keying and the bytes a retained fact costs (tracemalloc). docs/scaling.md quotes its figures.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from typing import Any

from pipeline.correlator import Correlator
from pipeline.events import TransitionDict
from pipeline.facts import as_event, fact_from_event, is_access_change, partition_for
from pipeline.keyed_state import KeyedState
from pipeline.publisher import TransitionPublisher
from pipeline.scoring.context import AgentBaseline
from pipeline.scoring.policy import load_policy
from pipeline.settings import Settings
from pipeline.workload import Workload


def facts(events: int) -> list[TransitionDict]:
    pub = TransitionPublisher(Settings.load(kafka_bootstrap="127.0.0.1:1"))  # complete() only: never connects
    out, offsets = [], [0] * 6
    for op in Workload(seed=1, planted=False, bad_inputs=False).ops(events):
        record = pub.complete(op.payload)
        if is_access_change(record):
            p = partition_for(record["run_id"], 6)
            offsets[p] += 1
            out.append(as_event(fact_from_event(record, p, offsets[p])))
    return out


def judging_half() -> Any:
    c: Any = Correlator.__new__(Correlator)  # the judging half only: no consumer, no producer
    c._sources = 0
    c.policy, c.scorer_window_ms = load_policy(None), 3_600_000
    c.graph = type("NoEdges", (), {"into": staticmethod(lambda agent: [])})()
    busy = AgentBaseline("any", events=1000, grants_per_hour=500.0)
    c.baselines = lambda key: busy
    return c


def judge(items: list[TransitionDict], by_target: bool) -> tuple[int, float]:
    c = judging_half()
    state = c._new_state(by_target)
    t0 = time.perf_counter()
    for ev in items:
        state.add(ev)
    n = 0
    for ev in state.release(1 << 62):
        key = state.key_of(ev)
        c._judge(state, key, ev)
        state.apply(key, ev, 1 << 40)
        n += 1
    return n, time.perf_counter() - t0


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    items = facts(events)
    print(f"{events:,} events -> {len(items):,} access facts ({len(items) / events:.2f} per event)")
    for by_target in (True, False):
        n, seconds = judge(items, by_target)
        print(f"  by {'target' if by_target else 'agent '}: {n / seconds:,.0f} facts/s")
    del items
    tracemalloc.start()
    items = facts(events)  # traced: the retained facts themselves count
    c = judging_half()
    both: list[KeyedState] = [c._new_state(True), c._new_state(False)]  # as the correlator builds them
    for state in both:
        for ev in items:
            state.add(ev)
        for ev in state.release(1 << 62):
            state.apply(state.key_of(ev), ev, 1 << 40)
    current, _ = tracemalloc.get_traced_memory()
    print(f"  state: {current / len(items):,.0f} bytes per fact held in both keyings")


if __name__ == "__main__":
    main()
