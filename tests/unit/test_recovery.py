"""Context recovery by replay (pipeline/recovery.py): the correlator's replay is complete or raises, the
scorer's stops at its caps; both show progress."""

from __future__ import annotations

import time
from typing import Any

import pytest


class _SilentReader:
    """A replay's reader that is handed nothing: a partition whose leader is away."""

    def assign(self, partitions: list[Any]) -> None:
        pass

    def consume(self, n: int, timeout: float) -> list[Any]:
        time.sleep(min(timeout, 0.01))
        return []

    def close(self) -> None:
        pass


def test_a_complete_replay_that_reads_nothing_raises_and_a_capped_one_ends_at_its_cap(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The correlator's replay (no caps) must not hand back a window cut short: with no message for
    ``stall_seconds`` it raises, so the assignment is retried. The scorer's (capped) ends at ``max_seconds``
    with what it read, as its context expects. Both log their progress meanwhile."""
    import logging

    from confluent_kafka import KafkaException, TopicPartition

    from pipeline import recovery
    from pipeline.settings import Settings

    monkeypatch.setattr(recovery, "log_reader", lambda settings, purpose: _SilentReader())
    settings = Settings.load(kafka_bootstrap="127.0.0.1:9")
    tp = TopicPartition("facts", 2, 500)
    caplog.set_level(logging.INFO, logger="pipeline.recovery")
    with pytest.raises(KafkaException, match=r"read nothing for 0.3s at offset 0 of 500"):
        recovery.replay(settings, tp, 0, lambda m: m, lambda x: None, max_events=None, max_seconds=None,
                        stall_seconds=0.3, progress_every=0.1)
    assert any(r.getMessage() == "replaying" for r in caplog.records)
    began = time.monotonic()
    assert recovery.replay(settings, tp, 0, lambda m: m, lambda x: None, max_events=100, max_seconds=0.3,
                           stall_seconds=0.05) == 0
    assert time.monotonic() - began < 5


def test_the_correlator_replays_its_whole_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """No count or time cap on the correlator's rebuild (the scorer's 200,000 and 120 s cut a busy fact
    partition's window to its last minutes, and a restarted correlator missed what the rest held)."""
    from confluent_kafka import TopicPartition

    from pipeline import correlator as correlator_module
    from pipeline.correlator import Correlator
    from pipeline.keyed_state import KeyedState

    asked: dict[str, Any] = {}

    def fake_replay(settings: Any, tp: Any, window_ms: int, decode: Any, observe: Any, **caps: Any) -> int:
        asked.update(caps, window_ms=window_ms)
        return 0

    monkeypatch.setattr(correlator_module, "replay", fake_replay)
    c = Correlator.__new__(Correlator)
    c.settings, c.retain_ms, c.grace_ms = None, 7_200_000, 2_000  # type: ignore[assignment]
    c._decode = lambda msg: None  # type: ignore[method-assign]
    c._early_keep_ms = lambda: 0  # type: ignore[method-assign]
    c._replay_into(TopicPartition("facts", 0, 1_000_000), KeyedState(True), 0)
    assert asked == {"max_events": None, "max_seconds": None, "window_ms": 7_200_000}
