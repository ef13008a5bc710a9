"""Security of the event path, end to end: hostile identifiers stay data, signatures are enforced."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pipeline.audit import trail
from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.scoring.catalogue import CATALOGUE
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

HOSTILE = [
    "run'); DROP TABLE transitions; --",
    "run\" OR 1=1 --",
    "{db}.transitions",
    "run{run:String}",
    "run`; SELECT * FROM system.users",
    "рун-ユーザー-😈",
]


def test_sql_looking_identifiers_are_stored_and_read_back_verbatim(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory()
    pipe = pipeline_factory(settings)
    pub = publisher_factory(settings)
    ids = {run: pub.publish(draft(run_id=run, **{"target.identity_id": run, "agent.agent_id": run[:40]}))
           for run in HOSTILE}
    pub.flush()
    assert pipe.wait_stored(len(HOSTILE), timeout=90)
    assert pipe.sink is not None
    for run, event_id in ids.items():
        steps = trail(pipe.sink, run)
        assert [s["event_id"] for s in steps] == [event_id]
        assert steps[0]["target_id"] == run and steps[0]["agent_id"] == run[:40]
    assert pipe.sink.count("transitions") == len(HOSTILE)  # nothing dropped, nothing else touched


def test_the_signature_code_is_in_the_catalogue() -> None:
    assert "AG-EVD-006" in CATALOGUE, "the signature rule left the catalogue: the test below must follow it"


def test_signatures_required_unsigned_or_bad_is_flagged_good_passes(
    settings_factory: Callable[..., Settings], publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory(signing_keys={"agent-2026": "k-2026", "agent-2027": "k-2027"},
                                require_signatures=True)
    pipe = pipeline_factory(settings)
    old_key = publisher_factory(settings, signing_key=("agent-2026", b"k-2026"))
    new_key = publisher_factory(settings, signing_key=("agent-2027", b"k-2027"))  # rotated: both accepted
    unsigned = publisher_factory(settings)
    forged = publisher_factory(settings, signing_key=("agent-2026", b"not-the-key"))
    unknown = publisher_factory(settings, signing_key=("agent-1999", b"k-1999"))
    events = {
        "old_key": old_key.publish(draft(run_id="run-sig-1")),
        "new_key": new_key.publish(draft(run_id="run-sig-2")),
        "unsigned": unsigned.publish(draft(run_id="run-sig-3")),
        "forged": forged.publish(draft(run_id="run-sig-4")),
        "unknown_key": unknown.publish(draft(run_id="run-sig-5")),
    }
    for pub in (old_key, new_key, unsigned, forged, unknown):
        pub.flush()
    assert pipe.wait_stored(len(events), timeout=90)
    assert pipe.sink is not None
    codes = {r["event_id"]: set(r["codes"]) for r in pipe.sink.query(
        "SELECT event_id, groupArray(code) AS codes FROM {db}.findings FINAL GROUP BY event_id")}
    for name in ("unsigned", "forged", "unknown_key"):
        assert "AG-EVD-006" in codes.get(events[name], set()), name
    for name in ("old_key", "new_key"):
        assert "AG-EVD-006" not in codes.get(events[name], set()), name
    # The signature is stored as evidence with the event.
    row = pipe.sink.query("SELECT key_id, signature FROM {db}.transitions FINAL WHERE event_id = {e:String}",
                          {"e": events["new_key"]})[0]
    assert row["key_id"] == "agent-2027" and len(row["signature"]) == 64
