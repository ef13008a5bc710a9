"""A scorer's rebuilt context holds what its live path accepted: an event it dead-lettered for its time (stamped
too far ahead of when it was scored) stays out of the replay too, judged against the record's log time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pipeline.consumer import Scorer
from pipeline.drafts import draft
from pipeline.events import event_hash
from pipeline.limits import Limits
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from tests.support.helpers import FakeMessage

SERDE = Serde(SchemaSet.load())
NOW_MS = int(time.time() * 1000)


def _bytes(occurred_at: int) -> bytes:
    rec: Any = draft(event_id="8d1c7c3e-0000-4000-8000-000000000001")
    rec.update(occurred_at=occurred_at, tenant=None,
               evidence={"event_hash": "", "prev_event_hash": None, "signature": None, "key_id": None})
    rec["evidence"]["event_hash"] = event_hash(rec)
    return SERDE.encode(rec)


def _replay_decoder() -> Any:
    s: Any = Scorer.__new__(Scorer)
    s.serde, s.limits, s._replay_gap = SERDE, Limits(), False
    return s._decode_quiet


@pytest.mark.parametrize(("ahead_ms", "log_after_ms", "admitted"), [
    (3_600_000, 0, False),          # an hour ahead of its log time: dead-lettered live, left out
    (60_000, 0, True),              # within the skew allowed
    (3_600_000, 3_600_000, True),   # its log time caught up with it: scored live, kept
    (3_600_000, None, True),        # no log time: judged by its own time, as before
])
def test_the_replay_leaves_out_what_the_live_path_dead_lettered_for_its_time(ahead_ms: int, log_after_ms: int | None,
                                                                               admitted: bool) -> None:
    log_ms = 0 if log_after_ms is None else NOW_MS + log_after_ms
    ev = _replay_decoder()(FakeMessage(_bytes(NOW_MS + ahead_ms), log_ms=log_ms))
    assert (ev is not None) is admitted
