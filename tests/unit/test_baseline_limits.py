"""Baselines are bounded: one over-large agent does not abort a refresh, and the cache evicts."""

from __future__ import annotations

from typing import Any

from pipeline.baselines import BaselineCache, BaselinePublisher
from pipeline.scoring.context import AgentBaseline
from pipeline.settings import Settings


class _Sink:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def query(self, *_: Any, **__: Any) -> list[dict[str, Any]]:
        return self.rows


class _LocalOnly:
    """The real producer's local checks (MSG_SIZE_TOO_LARGE is raised by produce()); no broker to wait for."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.real.produce(*args, **kwargs)

    def flush(self, *_: Any) -> int:
        self.real.purge()
        return 0


def _row(agent: str, n_entitlements: int) -> dict[str, Any]:
    return {"agent_id": agent, "events": 10, "actions": ["assign_role"], "systems": ["entra-id"],
            "entitlements": [f"ent-{i:06d}-{'x' * 40}" for i in range(n_entitlements)], "inputs": [],
            "max_tier": 1, "grants_per_hour": 1.0, "stale_policy_share": 0.0}


def test_an_over_large_baseline_is_skipped_not_the_whole_refresh() -> None:
    settings = Settings.load(kafka_bootstrap="127.0.0.1:1", max_message_bytes=100_000)
    sink = _Sink([_row("agent-a", 3), _row("agent-huge", 5000), _row("agent-b", 3)])
    pub = BaselinePublisher(settings, sink, window_seconds=3600, approved=[])  # type: ignore[arg-type]
    pub.producer = _LocalOnly(pub.producer)
    assert pub.publish_once() == 2
    assert pub.skipped == 1


def test_the_cache_evicts_stale_and_excess_baselines() -> None:
    cache = BaselineCache(Settings.load(kafka_bootstrap="127.0.0.1:1", baseline_refresh_seconds=60))
    day = 86_400_000
    cache.data = {f"a{i}": AgentBaseline(f"a{i}", 1, as_of_ms=10 * day + i) for i in range(5)}
    cache.data["gone"] = AgentBaseline("gone", 1, as_of_ms=9 * day)
    cache.as_of_ms = 10 * day + 4
    assert cache.evict() == 1 and "gone" not in cache.data
    cache.max_agents = 3
    assert cache.evict() == 2
    assert sorted(cache.data) == ["a2", "a3", "a4"]  # the most recent kept


def test_scorer_context_is_capped_in_bytes() -> None:
    from pipeline.state import PartitionContext, approx_bytes
    from tests.unit.scoring_factory import record

    cap = 4 * 1024 * 1024
    ctx = PartitionContext(3_600_000, max_keys=100_000, max_bytes=cap)
    big = {f"k{i}": "x" * 8000 for i in range(100)}  # ~800 KB per event, as a hostile client may send
    events = [record(run_id=f"run-{i}", attributes=big, **{"target.identity_id": f"u{i}", "agent.agent_id": f"a{i}"})
              for i in range(50)]
    for ev in events:
        ctx.observe(ev)
    last = events[-1]
    assert approx_bytes(last) > 800_000
    assert ctx.held_bytes <= cap // 3 + approx_bytes(last)  # one index's share, plus the event just added
    assert ctx.run_history(last) == (last,)  # the most recent survives
    assert len(ctx.runs.data) < 50


def test_an_identity_spelt_in_several_cases_has_one_merged_baseline() -> None:
    """The correlator keys agents by identity key; their baselines (keyed by the id as sent) are merged, so a
    new spelling does not start an agent afresh, with no baseline to drift from."""
    from pipeline.baselines import merged

    cache = BaselineCache(Settings.load(kafka_bootstrap="127.0.0.1:1"))
    a = AgentBaseline("Agent-7", 30, actions=frozenset({"assign_role"}), max_tier=1, grants_per_hour=1.0,
                      stale_policy_share=0.0, as_of_ms=5)
    b = AgentBaseline("agent-7", 10, systems=frozenset({"aws"}), max_tier=3, grants_per_hour=0.5,
                      stale_policy_share=0.4, as_of_ms=7)
    for x in (a, b):
        cache.data[x.agent_id] = x
        cache._spelt(x.agent_id)
    got = cache.for_identity("agent-7")
    assert got == merged("agent-7", [a, b]) or got == merged("agent-7", [b, a])
    assert got is not None and (got.events, got.max_tier, got.grants_per_hour) == (40, 3, 1.5)
    assert got.actions == {"assign_role"} and got.systems == {"aws"} and abs(got.stale_policy_share - 0.1) < 1e-9
    cache.data = {"Solo-Agent": AgentBaseline("Solo-Agent", 3, as_of_ms=5)}
    cache.spellings = {}
    cache._spelt("Solo-Agent")
    assert cache.for_identity("solo-agent") is cache.data["Solo-Agent"]
    assert cache.for_identity("nobody") is None
