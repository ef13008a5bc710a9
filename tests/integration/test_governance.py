"""Governance findings through the real broker and embedded ClickHouse: every planted violation,
hidden-escalation chain and evidence-chain break is caught, benign traffic raises nothing, and drift
is judged against baselines aggregated from the store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipeline.drafts import draft
from pipeline.publisher import TransitionPublisher
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.workload import BAD_INPUTS, PLANTED, Workload
from tests.support.helpers import consume, wait_baseline

pytestmark = pytest.mark.integration


def test_planted_violations_caught_and_benign_clean(
    settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    settings = settings_factory()
    pipe = pipeline_factory(settings, scorers=2)
    pub = publisher_factory(settings)
    ops = list(Workload(seed=3).ops(4000))
    for op in ops:
        op.publish(pub)
    pub.flush()
    skipped = sum(1 for op in ops if op.kind == "record" and op.send == "skip")
    bad = sum(1 for op in ops if op.scenario in BAD_INPUTS)
    valid = len(ops) - skipped - bad
    assert pipe.wait_stored(valid, timeout=120)
    assert pipe.sink is not None

    rows = pipe.sink.query(
        "SELECT t.attributes['demo.scenario'] AS scenario, f.code AS code, f.related_event_ids AS related "
        "FROM (SELECT event_id, code, related_event_ids FROM {db}.findings FINAL "
        # a later copy of an event_id is kept apart (first copy wins), with the scorer's findings on it
        "UNION ALL SELECT event_id, arrayJoin(finding_codes) AS code, [] AS related_event_ids FROM {db}.duplicates"
        ") AS f INNER JOIN (SELECT event_id, attributes FROM {db}.transitions FINAL) AS t ON t.event_id = f.event_id")
    by_scenario: dict[str, set[str]] = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], set()).add(r["code"])
    assert "benign" not in by_scenario, f"false positives: {by_scenario.get('benign')}"
    missed = {s: c for s, c in PLANTED.items() if c not in by_scenario.get(s, set())}
    assert not missed, f"missed: {missed}; got {by_scenario}"

    # each escalation chain reported exactly once, naming every step
    chains = [r for r in rows if r["code"].startswith("AG-ESC-")]
    assert sorted(r["code"] for r in chains) == ["AG-ESC-001", "AG-ESC-002", "AG-ESC-003", "AG-ESC-004"]
    group = next(r for r in chains if r["code"] == "AG-ESC-001")
    steps = pipe.sink.query("SELECT event_id FROM {db}.transitions FINAL WHERE run_id = 'run-p-esc-group'")
    assert set(group["related"]) <= {s["event_id"] for s in steps} and len(group["related"]) >= 3

    dead = consume(settings, settings.topic_dlq, bad)
    assert sorted(dict(m.headers())["agentgov.error.reason"].decode() for m in dead) == sorted(BAD_INPUTS.values())


def test_drift_against_store_baselines(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    policy = yaml.safe_load(Path("policies/default.yaml").read_text())
    policy["version"] = "test-drift"
    policy["drift"]["min_baseline_events"] = 30
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    settings = settings_factory(policy_file=policy_file, baseline_refresh_seconds=1.0)
    pipe = pipeline_factory(settings, scorers=1)
    pub = publisher_factory(settings)

    # history: the agent only ever adds group members in the directory
    for i in range(40):
        pub.publish(draft(run_id=f"run-h{i}", **{"target.identity_id": f"u{i}"}))
    pub.flush()
    assert pipe.wait_stored(40, timeout=90)

    baseline = wait_baseline(settings, "agent-jml-01", 40)
    assert baseline is not None, "no baseline published from the store"
    assert baseline["actions"] == ["add_group_member"] and baseline["systems"] == ["entra-id"]
    time.sleep(3)  # the scorer follows the compacted topic

    # the same agent now reaches for a new system and a new action, within its boundary
    new = pub.publish(draft(run_id="run-new", action="assign_role",
                            **{"resource.system": "aws", "resource.resource_id": "role/ReadOnly"}))
    usual = pub.publish(draft(run_id="run-usual", **{"target.identity_id": "u-usual"}))
    pub.flush()
    assert pipe.wait_stored(42, timeout=60)
    codes = {r["event_id"]: set(r["codes"]) for r in pipe.sink.query(
        "SELECT event_id, groupArray(code) AS codes FROM {db}.findings FINAL GROUP BY event_id")}
    assert {"AG-DRF-001", "AG-DRF-002"} <= codes.get(new, set()), codes.get(new)
    assert usual not in codes
    # warm-up: none of the 40 history events drew a drift finding
    assert all(not c.startswith("AG-DRF") for e, cs in codes.items() if e != new for c in cs)


def test_changed_policy_file_is_picked_up_without_losing_events(
    tmp_path: Path,
    settings_factory: Callable[..., Settings],
    publisher_factory: Callable[..., TransitionPublisher],
    pipeline_factory: Callable[..., Pipeline],
) -> None:
    text = Path("policies/default.yaml").read_text()
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(text)
    settings = settings_factory(policy_file=policy_file, policy_reload_seconds=0.5)
    pipe = pipeline_factory(settings, scorers=1)
    pub = publisher_factory(settings)
    first = [pub.publish(draft(run_id=f"run-a{i}")) for i in range(50)]
    pub.flush()
    assert pipe.wait_stored(50, timeout=90)

    policy_file.write_text(text.replace('version: "2026.11.0"', 'version: "2026.11.1-stricter"')
                           .replace("human_approval_tiers: [2, 3]", "human_approval_tiers: [1, 2, 3]"))
    time.sleep(3)
    second = [pub.publish(draft(run_id=f"run-b{i}")) for i in range(50)]
    pub.flush()
    assert pipe.wait_stored(100, timeout=90)
    assert pipe.sink is not None
    rows = {r["event_id"]: r for r in pipe.sink.query(
        "SELECT event_id, governance_policy_version AS v, finding_codes FROM {db}.assessments FINAL")}
    assert len(rows) == 100
    assert {rows[e]["v"] for e in first} == {"2026.11.0"}
    assert {rows[e]["v"] for e in second} == {"2026.11.1-stricter"}
    # the new boundary is in force: tier-1 grants without approval now need a human
    assert all("AG-AUTH-001" in rows[e]["finding_codes"] for e in second)
    assert not any(rows[e]["finding_codes"] for e in first)
