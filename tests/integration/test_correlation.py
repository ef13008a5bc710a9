"""The correlation stage on the real broker and store: 2 scorers and 2 correlators, 6 partitions.

Every chained case puts its runs on different partitions of ``agentgov.transitions.v1`` (run ids picked
with the producer's partitioner, then asserted from the stored assessments' ``source_partition``), so no
single scorer sees the chain. Each case has a benign look-alike that must raise nothing. One pipeline
serves the whole module (start-up dominates the cost); each case uses identities of its own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from pipeline.audit import export, render_trail, trail
from pipeline.broker import EmbeddedBroker, free_port
from pipeline.deadletters import header
from pipeline.drafts import draft
from pipeline.events import identity_key
from pipeline.facts import FACT, fact_from_event, partition_for
from pipeline.metrics import Metrics
from pipeline.publisher import TransitionPublisher
from pipeline.review.store import QueueFilter, ReviewStore
from pipeline.runner import Pipeline
from pipeline.schemas import SchemaSet
from pipeline.serde import Serde
from pipeline.settings import Settings
from pipeline.sinks.clickhouse import wait_for
from pipeline.topics import ensure_topics
from tests.support.helpers import consume, scrape, wait_baseline, wait_until

pytestmark = pytest.mark.integration

PARTS = 6
TAG = uuid.uuid4().hex[:8]
NOW = datetime.now(UTC)


def runs_on_distinct_partitions(prefix: str, n: int) -> list[str]:
    """``n`` run ids that the publisher (crc32 of the key) sends to ``n`` different partitions."""
    out: list[str] = []
    used: set[int] = set()
    i = 0
    while len(out) < n:
        run = f"{prefix}-{TAG}-{i}"
        p = partition_for(run, PARTS)
        if p not in used:
            used.add(p)
            out.append(run)
        i += 1
    return out


def at(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat()


class World:
    def __init__(self, settings: Settings, pipe: Pipeline, pub: TransitionPublisher, ports: list[int]) -> None:
        self.settings, self.pipe, self.pub, self.ports = settings, pipe, pub, ports
        self.published = 0

    def publish(self, *drafts: dict[str, Any]) -> list[str]:
        ids = [self.pub.publish(d) for d in drafts]
        self.pub.flush()
        self.published += len(drafts)
        # Both: a redelivered copy (Tansu shows aborted transactions) counts in wait_stored, and a later
        # copy of an event_id (AG-XRN-006's cases) is not a new event for wait_events.
        assert self.pipe.wait_stored(self.published, timeout=120), self.stuck(f"{self.published} records not stored")
        assert self.pipe.wait_events(ids, timeout=120), self.stuck("assessments not stored")
        return ids

    def stuck(self, what: str) -> str:
        """What a stalled wait says: the writer's count and each child's recent log, so a failure on CI
        (where the module's temporary directory is gone) says where the records stopped."""
        writer = self.pipe.writer
        parts = [f"{what}; the writer handled {writer.stored if writer else None}"]
        for proc in (*self.pipe.procs, *self.pipe.correlator_procs):
            parts.append(f"--- {proc!r}\n{proc.tail(25)}")
        return "\n".join(parts)

    def findings(self) -> list[dict[str, Any]]:
        assert self.pipe.sink is not None
        return self.pipe.sink.query("SELECT * FROM {db}.cross_run_findings FINAL ORDER BY occurred_at, finding_id")

    def partitions(self, event_ids: list[str]) -> list[int]:
        assert self.pipe.sink is not None
        rows = self.pipe.sink.query("SELECT event_id, any(source_partition) AS p FROM {db}.transitions FINAL "
                                    "WHERE has({ids:Array(String)}, event_id) GROUP BY event_id", {"ids": event_ids})
        by_id = {r["event_id"]: r["p"] for r in rows}
        return [by_id[e] for e in event_ids]


@pytest.fixture(scope="module")
def world(broker: EmbeddedBroker, chdb_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("correlation")
    policy = yaml.safe_load(Path("policies/default.yaml").read_text())
    policy["version"] = "test-correlation"
    policy["drift"]["min_baseline_events"] = 30
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    tag = uuid.uuid4().hex[:10]
    names = {f"topic_{n}": f"t{tag}.{n}" for n in ("transitions", "assessments", "dlq", "baselines",
                                                   "facts_by_target", "facts_by_agent", "holdings",
                                                   "delegations", "correlations")}
    settings = Settings.load(
        kafka_bootstrap=broker.bootstrap, **names, scorer_group=f"scorer-{tag}", writer_group=f"writer-{tag}",
        correlator_group=f"correlator-{tag}", clickhouse_dsn=f"chdb://{chdb_path}", clickhouse_database=f"t{tag}",
        metrics_port=0, state_dir=tmp / "state", batch_max_seconds=0.1, writer_batch_seconds=0.2,
        topic_partitions=PARTS, facts_partitions=PARTS, correlation_grace_seconds=15,
        baseline_refresh_seconds=1.0, policy_file=tmp / "policy.yaml")
    ensure_topics(settings)
    settings.state_dir.mkdir(parents=True)
    ports = [free_port(), free_port()]
    pipe = Pipeline(settings, scorers=2, correlators=2, metrics=Metrics(CollectorRegistry()),
                    log_dir=settings.state_dir, correlator_metrics_ports=ports).start()
    pub = TransitionPublisher(settings)
    try:
        yield World(settings, pipe, pub, ports)
    finally:
        pub.producer.flush(5)
        pipe.stop()


def wait_findings(world: World, predicate: Callable[[list[dict[str, Any]]], bool],
                  timeout: float = 90) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def check() -> bool:
        nonlocal found
        found = world.findings()
        return predicate(found)

    wait_for(check, timeout, interval=1.0)
    return found


def of(found: list[dict[str, Any]], code: str, key: str) -> list[dict[str, Any]]:
    return [f for f in found if f["code"] == code and f["entity_key"] == key]


def grant(run: str, target: str, *, step: int = 1, when: str, **extra: Any) -> dict[str, Any]:
    return draft(run_id=run, step=step, occurred_at=when, action="assign_role",
                 **{"target.identity_id": target, **extra})


def test_cross_run_chains_are_found_once_with_every_run_and_benign_look_alikes_are_not(world: World) -> None:
    keys: dict[str, str] = {}
    # 1. tier stepping over three runs; look-alike: a human approved the final step
    lasts: tuple[tuple[str, dict[str, Any]], ...] = (
        ("step", {}), ("step-ok", {"decision.authority": "human", "decision.approved_by": "ciso"}))
    for name, last in lasts:
        target = keys[name] = f"u-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 3)
        ids = world.publish(grant(r[0], target, when=at(minutes=10), **{"resource.resource_id": "role/Step1",
                                                                         "resource.privilege_tier": 1}),
                            grant(r[1], target, when=at(minutes=5), **{"resource.resource_id": "role/Step2",
                                                                        "resource.privilege_tier": 2}))
        ids += world.publish(grant(r[2], target, when=at(seconds=1), **{"resource.resource_id": "role/Step3",
                                                                         "resource.privilege_tier": 3, **last}))
        assert len(set(world.partitions(ids))) == 3
    # 2. transient privilege over two runs 90 s apart; look-alike: revoked after 2000 s (> 900 s window)
    jit = {"resource.system": "aws", "resource.resource_id": "role/Admin", "resource.entitlement": "aws-admin",
           "resource.privilege_tier": 3}
    for name, held_s in (("jit", 90), ("jit-ok", 2000)):
        target = keys[name] = f"u-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 2)
        ids = world.publish(draft(run_id=r[0], step=1, occurred_at=at(seconds=held_s + 1), action="grant_entitlement",
                                  **{"target.identity_id": target, **jit}))
        ids += world.publish(draft(run_id=r[1], step=1, occurred_at=at(seconds=1), action="revoke_entitlement",
                                   **{"target.identity_id": target, **jit}))
        assert len(set(world.partitions(ids))) == 2
    # 3. delegation laundering at depth 2 and 3; look-alike: the privileged grant goes to someone unrelated
    for name, depth, to in (("deleg2", 2, None), ("deleg3", 3, None), ("deleg-ok", 3, f"h-other-{TAG}")):
        agents = [f"agent-{name}-{c}-{TAG}" for c in "abcd"[:depth + 1]]
        principal = f"h-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, depth + 1)
        hops = [draft(run_id=r[i], step=1, occurred_at=at(minutes=10 - i), action="assign_role",
                      **{"agent.agent_id": agents[i], "agent.on_behalf_of": principal if i == 0 else None,
                         "target.identity_id": agents[i + 1], "target.identity_type": "agent",
                         "resource.resource_id": "role/PrivilegedRoleAdministrator", "resource.privilege_tier": 2})
                for i in range(depth)]
        ids = world.publish(*hops)
        time.sleep(2)  # the correlators follow the delegation topic
        ids += world.publish(draft(run_id=r[depth], step=1, occurred_at=at(seconds=1), action="grant_entitlement",
                                   **{"agent.agent_id": agents[-1], "agent.on_behalf_of": None,
                                      "target.identity_id": to or principal, **jit}))
        keys[name] = agents[-1]
        assert len(set(world.partitions(ids))) == depth + 1
    # 3b. laundering through a group: agent a (for h) grants a group role admin, agent x makes agent b a member,
    #     b grants h tier 3; look-alike: b was taken out of the group before its grant
    for name in ("deleg-grp", "deleg-grp-ok"):
        a, x, b = (f"agent-{name}-{c}-{TAG}" for c in "axb")
        group, principal = f"grp-{name}-{TAG}", f"h-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 3)
        member = {"agent.agent_id": x, "agent.on_behalf_of": None, "target.identity_id": b,
                  "target.identity_type": "agent", "resource.resource_id": group, "resource.privilege_tier": 1}
        steps = [draft(run_id=r[0], step=1, occurred_at=at(minutes=10), action="assign_role",
                       **{"agent.agent_id": a, "agent.on_behalf_of": principal, "target.identity_id": group,
                          "target.identity_type": "service", "resource.resource_id": "role/PrivilegedRoleAdministrator",
                          "resource.privilege_tier": 2}),
                 draft(run_id=r[1], step=1, occurred_at=at(minutes=8), action="add_group_member", **member)]
        if name == "deleg-grp-ok":
            steps.append(draft(run_id=r[1], step=2, occurred_at=at(minutes=6), action="remove_group_member",
                               **member))
        ids = world.publish(*steps)
        time.sleep(2)  # the correlators follow the delegation topic
        ids += world.publish(draft(run_id=r[2], step=1, occurred_at=at(seconds=1), action="grant_entitlement",
                                   **{"agent.agent_id": b, "agent.on_behalf_of": None, "target.identity_id": principal,
                                      **jit}))
        keys[name] = b
        assert len(set(world.partitions(ids))) == 3
    # 4. separation of duties: the first half granted 30 days earlier (event time) and stored
    for name, second in (("sod", "ap-approve-payment"), ("sod-ok", "gl-post-journal")):
        target = keys[name] = f"u-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 2)
        sap = {"resource.system": "sap", "resource.resource_id": "sap-fi", "target.identity_id": target}
        first = world.publish(draft(run_id=r[0], step=1, occurred_at=at(days=30), action="grant_entitlement",
                                    **{**sap, "resource.entitlement": "ap-create-vendor"}))
        assert world.pipe.sink is not None
        stored = world.pipe.sink.query("SELECT access FROM {db}.access_changes FINAL WHERE target_id = {t:String}",
                                       {"t": target})
        assert [s["access"] for s in stored] == ["ap-create-vendor"]
        ids = first + world.publish(draft(run_id=r[1], step=1, occurred_at=at(seconds=1), action="grant_entitlement",
                                          **{**sap, "resource.entitlement": second}))
        assert len(set(world.partitions(ids))) == 2
    # 5. duplicate event_id across partitions; look-alike: the same event_id republished in its own run
    for name in ("dup", "dup-ok"):
        target = keys[name] = f"u-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 2)
        event_id = str(uuid.uuid4())
        second_run = r[1] if name == "dup" else r[0]
        ids = world.publish(draft(run_id=r[0], step=1, event_id=event_id, occurred_at=at(seconds=3),
                                  **{"target.identity_id": target}))
        world.publish(draft(run_id=second_run, step=1, event_id=event_id, occurred_at=at(seconds=2),
                            **{"target.identity_id": target, "resource.resource_id": "grp-finance"}))
    # 6. a grant to an identity disabled 90 days earlier (event time), the event calling it active;
    #    look-alike: re-hired (account created again) in between
    for name in ("left", "left-ok"):
        target = keys[name] = f"u-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 3)
        account = {"target.identity_id": target, "resource.resource_id": "user-account",
                   "resource.privilege_tier": 0}
        ids = world.publish(draft(run_id=r[0], step=1, occurred_at=at(days=90), action="disable_account",
                                  trigger={"kind": "leaver", "ref": "HR-9"},
                                  **{**account, "target.lifecycle_state": "terminated"}))
        if name == "left-ok":
            world.publish(draft(run_id=r[1], step=1, occurred_at=at(days=10), action="create_account", **account))
        ids += world.publish(draft(run_id=r[2], step=1, occurred_at=at(seconds=1), action="grant_entitlement",
                                   **{"target.identity_id": target, "resource.system": "salesforce",
                                      "resource.resource_id": "sf-profile", "resource.entitlement": "sales-standard"}))
        assert len(set(world.partitions(ids))) == 2

    # 7. group nesting over three runs by one agent: create a group, add the agent's principal, grant the
    #    group tier 3; look-alike: a human approved the grant
    for name, last in (("nest", {}), ("nest-ok", {"decision.authority": "human", "decision.approved_by": "ciso"})):
        agent = keys[name] = f"agent-{name}-{TAG}"
        group, owner = f"grp-{name}-{TAG}", f"h-{name}-{TAG}"
        r = runs_on_distinct_partitions(name, 3)
        who = {"agent.agent_id": agent, "agent.on_behalf_of": owner}
        ids = world.publish(draft(run_id=r[0], step=1, occurred_at=at(minutes=20), action="create_group",
                                  **{**who, "target.identity_id": group, "target.identity_type": "service",
                                     "resource.resource_id": group, "resource.privilege_tier": 0}),
                            draft(run_id=r[1], step=1, occurred_at=at(minutes=10), action="add_group_member",
                                  **{**who, "target.identity_id": owner, "resource.resource_id": group}))
        ids += world.publish(draft(run_id=r[2], step=1, occurred_at=at(seconds=1), action="assign_role",
                                   **{**who, "target.identity_id": group, "target.identity_type": "service",
                                      "resource.resource_id": "role/GlobalAdmin", "resource.privilege_tier": 3,
                                      **last}))
        assert len(set(world.partitions(ids))) == 3

    found = wait_findings(world, lambda f: {"AG-XRN-001", "AG-XRN-002", "AG-XRN-005", "AG-XRN-006", "AG-XRN-007",
                                            "AG-XRN-008"} <= {x["code"] for x in f}
                          and len(of(f, "AG-XRN-003", keys["deleg3"])) == 1
                          and len(of(f, "AG-XRN-003", keys["deleg2"])) == 1
                          and len(of(f, "AG-XRN-003", keys["deleg-grp"])) == 1)
    step = of(found, "AG-XRN-001", keys["step"])
    assert len(step) == 1 and len(step[0]["related_run_ids"]) == 3 and len(set(step[0]["related_partitions"])) == 3
    assert step[0]["pattern"] == "tier_stepping"
    jit_f = of(found, "AG-XRN-002", keys["jit"])
    assert len(jit_f) == 1 and len(jit_f[0]["related_run_ids"]) == 2
    for name, depth in (("deleg2", 2), ("deleg3", 3)):
        f = of(found, "AG-XRN-003", keys[name])[0]
        assert f"depth {depth}" in f["message"] and len(f["related_event_ids"]) == depth + 1
        assert len(f["related_run_ids"]) == depth + 1
    via_group = of(found, "AG-XRN-003", keys["deleg-grp"])[0]
    assert "depth 2" in via_group["message"] and "to group" in via_group["message"]
    assert len(via_group["related_run_ids"]) == 3
    sod = of(found, "AG-XRN-005", keys["sod"])
    assert len(sod) == 1 and "30.0 days earlier" in sod[0]["message"]
    dup = of(found, "AG-XRN-006", keys["dup"])
    assert len(dup) == 1 and len(set(dup[0]["related_partitions"])) == 2
    left = of(found, "AG-XRN-007", keys["left"])
    assert len(left) == 1 and "90.0 days earlier" in left[0]["message"]
    nest = of(found, "AG-XRN-008", keys["nest"])
    assert len(nest) == 1 and len(nest[0]["related_run_ids"]) == 3 and nest[0]["pattern"] == "group_nesting"
    # benign look-alikes: nothing, on any code
    for name in ("step-ok", "jit-ok", "deleg-ok", "deleg-grp-ok", "sod-ok", "dup-ok", "left-ok", "nest-ok"):
        assert [f for f in found if f["entity_key"] == keys[name]] == [], name
    # stored once each (deterministic ids; FINAL and raw agree)
    assert world.pipe.sink is not None
    raw = world.pipe.sink.query("SELECT count() AS n, uniqExact(finding_id) AS u FROM {db}.cross_run_findings")[0]
    assert raw["n"] == raw["u"] == len(found)

    # trail names the other runs, on every step of the run that is part of the chain
    first_run = step[0]["related_run_ids"][0]
    text = render_trail(trail(world.pipe.sink, first_run))
    assert "AG-XRN-001" in text and step[0]["related_run_ids"][2] in text
    # export carries it on the completing event
    docs = list(export(world.pipe.sink, since=datetime.now(UTC) - timedelta(days=40),
                       until=datetime.now(UTC) + timedelta(days=1), run_id=step[0]["run_id"]))
    assert any(f["code"] == "AG-XRN-001" for d in docs for f in d["findings"])
    # the review queue lists the chain as a finding of its completing event, and its page names every run
    review = ReviewStore(world.pipe.sink)
    queued, _ = review.queue(QueueFilter(agent=step[0]["agent_id"], code=["AG-XRN-001"]), int(time.time() * 1000),
                             limit=500)
    assert [r["event_id"] for r in queued if r["event_id"] == step[0]["event_id"]] == [step[0]["event_id"]]
    page = review.finding(step[0]["event_id"], "AG-XRN-001")
    assert page is not None
    assert {run for run, _ in review.trails(page)} == set(step[0]["related_run_ids"])
    # the page: one chain series on the correlator that found it
    series = [k for port in world.ports for k, v in scrape(port).items()
              if k[0] == "agentgov_escalation_chain_detected" and v > 0]
    pages = {dict(labels)["run_id"] for _, labels in series if dict(labels)["pattern"] == "tier_stepping"}
    assert step[0]["run_id"] in pages


def test_a_climb_one_scorer_held_but_lost_from_its_context_is_found_by_the_correlator(world: World) -> None:
    """One run (one partition) steps a target 1 -> 2 -> 3 with 64 harmless steps on the target between the
    climb's steps: the scorer's per-key context (64 events) no longer holds the first step when the last
    arrives, so it raises no AG-ESC-002, and its facts say so (``scorer_codes``). The correlator holds every
    fact of the target and reports the climb (AG-XRN-001). Look-alike: the same climb without the padding,
    which the scorer reports itself (AG-ESC-002) and the correlator leaves to it."""
    for name, pad in (("held", 0), ("lost", 64)):
        target, run = f"u-climb-{name}-{TAG}", f"climb-{name}-{TAG}"
        steps: list[dict[str, Any]] = []
        for tier in (1, 2, 3):
            steps.append(grant(run, target, step=len(steps), when=at(minutes=4 - tier),
                               **{"resource.resource_id": f"role/Step{tier}", "resource.privilege_tier": tier}))
            if tier < 3:
                steps += [draft(run_id=run, step=len(steps), occurred_at=at(minutes=4 - tier, seconds=-1 - i / 10),
                                action="recommend", **{"target.identity_id": target,
                                                       "decision.outcome": "recommended"}) for i in range(pad)]
        ids = world.publish(*steps)
        assert len(set(world.partitions(ids))) == 1
    lost, held = f"u-climb-lost-{TAG}", f"u-climb-held-{TAG}"
    found = wait_findings(world, lambda f: bool(of(f, "AG-XRN-001", lost)))
    climb = of(found, "AG-XRN-001", lost)
    assert len(climb) == 1 and len(climb[0]["related_event_ids"]) == 3, climb
    assert "whose scorer no longer held the chain" in climb[0]["message"]
    assert world.pipe.sink is not None
    scored = {r["target_id"]: r["n"] for r in world.pipe.sink.query(
        "SELECT target_id, count() AS n FROM {db}.findings FINAL WHERE code = 'AG-ESC-002' "
        "AND has({t:Array(String)}, target_id) GROUP BY target_id", {"t": [lost, held]})}
    assert scored == {held: 1}  # the scorer reported the held climb, and only it
    time.sleep(world.settings.correlation_grace_seconds + 2)  # past the grace: the held climb was judged
    assert of(world.findings(), "AG-XRN-001", held) == []


def test_one_identity_spelt_in_several_cases_is_one_entity(world: World) -> None:
    """Ids are matched as identity keys (case-folded): a climb over three runs on ``U-Case``, ``u-case`` and
    ``U-CASE``, and a laundering chain whose privileged grant names the principal in capitals, are each one
    entity's chain. Look-alike: the same climb over three different identities. The store keeps every id as
    sent; the finding names the entity by its key."""
    tiers = ({"resource.resource_id": "role/Step1", "resource.privilege_tier": 1},
             {"resource.resource_id": "role/Step2", "resource.privilege_tier": 2},
             {"resource.resource_id": "role/Step3", "resource.privilege_tier": 3})
    spelt = [f"U-Case-{TAG}", f"u-case-{TAG}", f"U-CASE-{TAG.upper()}"]
    apart = [f"u-apart-{TAG}-{i}" for i in range(3)]
    for name, targets in (("case", spelt), ("apart", apart)):
        r = runs_on_distinct_partitions(name, 3)
        ids = world.publish(*[grant(r[i], targets[i], when=at(minutes=10 - 4 * i), **tiers[i]) for i in range(3)])
        assert len(set(world.partitions(ids))) == 3
    # laundering at depth 2: A (for H-Case) gives B role admin, B gives C role admin, C grants H-CASE tier 3
    agents = [f"Agent-Case-{c}-{TAG}" for c in "abc"]
    principal = f"h-case-{TAG}"
    r = runs_on_distinct_partitions("case-deleg", 3)
    world.publish(*[draft(run_id=r[i], step=1, occurred_at=at(minutes=10 - i), action="assign_role",
                          **{"agent.agent_id": agents[i], "agent.on_behalf_of": principal if i == 0 else None,
                             "target.identity_id": agents[i + 1].lower(), "target.identity_type": "agent",
                             "resource.resource_id": "role/PrivilegedRoleAdministrator",
                             "resource.privilege_tier": 2}) for i in range(2)])
    time.sleep(2)  # the correlators follow the delegation topic
    world.publish(draft(run_id=r[2], step=1, occurred_at=at(seconds=1), action="grant_entitlement",
                        **{"agent.agent_id": agents[2].upper(), "agent.on_behalf_of": None,
                           "target.identity_id": principal.upper(), "resource.system": "aws",
                           "resource.resource_id": "role/Admin", "resource.entitlement": "aws-admin",
                           "resource.privilege_tier": 3}))
    key, delegate = spelt[0].casefold(), agents[2].casefold()
    found = wait_findings(world, lambda f: bool(of(f, "AG-XRN-001", key)) and bool(of(f, "AG-XRN-003", delegate)))
    climb = of(found, "AG-XRN-001", key)
    assert len(climb) == 1 and len(climb[0]["related_run_ids"]) == 3, climb
    laundering = of(found, "AG-XRN-003", delegate)
    assert len(laundering) == 1 and "depth 2" in laundering[0]["message"], laundering
    assert [f for f in found if f["entity_key"] in {a.casefold() for a in apart}] == []
    assert world.pipe.sink is not None
    stored = {r["target_id"] for r in world.pipe.sink.query(
        "SELECT DISTINCT target_id FROM {db}.transitions WHERE has({ids:Array(String)}, event_id)",
        {"ids": climb[0]["related_event_ids"]})}
    assert stored == set(spelt)  # the evidence keeps each id as it was sent


def test_grant_rate_burst_and_stale_policy_drift_over_six_partitions(world: World) -> None:
    agent = f"agent-burst-{TAG}"
    # six days of steady baseline: 40 grants
    world.publish(*[draft(run_id=f"base-{TAG}-{i}", occurred_at=at(hours=144 - i * 3.5),
                          **{"agent.agent_id": agent, "target.identity_id": f"u-base-{TAG}-{i}"}) for i in range(40)])
    assert wait_baseline(world.settings, agent, 40) is not None, world.stuck("no baseline of the burst's agent")
    time.sleep(3)  # the correlators follow the compacted baselines topic
    # 40 grants in 30 minutes, each in its own run, arriving as they happen (in event-time order); every
    # third under an unapproved policy version (35%: over the 20% share, yet no partition has 10 decisions)
    ids = []
    for i in range(40):
        stale = {"policy.policy_version": "5"} if i % 3 == 0 else {}
        ids += world.publish(draft(run_id=f"burst-{TAG}-{i}", occurred_at=at(minutes=30 - i * 0.7),
                                   **{"agent.agent_id": agent, "target.identity_id": f"u-burst-{TAG}-{i}", **stale}))
    assert len(set(world.partitions(ids))) == PARTS
    found = wait_findings(world, lambda f: bool(of(f, "AG-XRN-004", agent)) and bool(of(f, "AG-XRN-009", agent)))
    rate = of(found, "AG-XRN-004", agent)
    assert len(rate) == 1, rate
    assert len(rate[0]["related_event_ids"]) == 20 and len(set(rate[0]["related_partitions"])) >= 4
    drift = of(found, "AG-XRN-009", agent)
    assert len(drift) == 1 and len(set(drift[0]["related_partitions"])) >= 2, drift


def test_delegation_laundering_is_found_when_its_edges_are_read_after_the_grant(world: World) -> None:
    """The edges of a chain granted minutes before the privileged grant, but published after the grant was
    judged (their runs scored later: a lagging scorer, a backlog read unevenly). The grant is judged with no
    edge into its agent (the correlators wait until no fact is pending); reading the edges then judges it
    again. Look-alike: the same late edges, the grant to someone unrelated."""
    jit = {"resource.system": "aws", "resource.resource_id": "role/Admin", "resource.entitlement": "aws-admin",
           "resource.privilege_tier": 3}
    cases = {"late": None, "late-ok": f"h-other-late-{TAG}"}
    agents = {name: [f"agent-{name}-{c}-{TAG}" for c in "abc"] for name in cases}
    runs = {name: runs_on_distinct_partitions(name, 3) for name in cases}
    ids = {name: world.publish(draft(run_id=runs[name][2], step=1, occurred_at=at(minutes=5),
                                     action="grant_entitlement",
                                     **{"agent.agent_id": agents[name][2], "agent.on_behalf_of": None,
                                        "target.identity_id": to or f"h-{name}-{TAG}", **jit}))
           for name, to in cases.items()}

    def judged() -> bool:
        return sum(v for port in world.ports for (metric, _), v in scrape(port).items()
                   if metric == "agentgov_correlator_pending_facts") == 0
    assert wait_until(judged, timeout=90, interval=0.5), "the grants were not judged"
    for name in cases:
        ids[name] += world.publish(*[draft(run_id=runs[name][i], step=1, occurred_at=at(minutes=10 - i),
                                           action="assign_role",
                                           **{"agent.agent_id": agents[name][i],
                                              "target.identity_id": agents[name][i + 1],
                                              "agent.on_behalf_of": f"h-{name}-{TAG}" if i == 0 else None,
                                              "target.identity_type": "agent",
                                              "resource.resource_id": "role/PrivilegedRoleAdministrator",
                                              "resource.privilege_tier": 2})
                                     for i in range(2)])
        assert len(set(world.partitions(ids[name]))) == 3
    found = wait_findings(world, lambda f: len(of(f, "AG-XRN-003", agents["late"][2])) == 1)
    assert len(of(found, "AG-XRN-003", agents["late"][2])) == 1, "the chain whose edges came late was missed"
    f = of(found, "AG-XRN-003", agents["late"][2])[0]
    assert "depth 2" in f["message"] and len(f["related_event_ids"]) == 3 and len(f["related_run_ids"]) == 3
    late = sum(v for port in world.ports for (metric, _), v in scrape(port).items()
               if metric == "agentgov_correlator_late_edges_total")
    assert late >= 1, "the late edge was not counted"
    time.sleep(3)  # the look-alike's edges were read before the chain's finding was stored
    assert [x for x in world.findings() if x["entity_key"] == agents["late-ok"][2]] == []


def test_forged_facts_are_dead_lettered_and_the_chains_after_them_are_found(world: World) -> None:
    """Facts written to the by-target topic by something other than a scorer (Tansu has no ACLs): one stamped
    at int64 max (it was held as state, and moved its partition's watermark past every real fact), one naming
    a source partition the transitions topic lacks, one with a negative source offset. Each is dead-lettered
    by a real correlator with the field named; a climb over three runs on the same partition of the by-target
    topic, published after them, is still found once."""
    s = world.settings
    target = f"u-forged-{TAG}"
    p = partition_for(identity_key(target), PARTS)  # the by-target partition the climb's facts land on
    serde = Serde(SchemaSet.load(), None, record=FACT)
    base = world.pub.complete(grant(f"forged-{TAG}", target, when=at(minutes=5),
                                    **{"resource.resource_id": "role/Forged", "resource.privilege_tier": 3}))
    forged = []
    for field, value in (("occurred_at", 2**63 - 1), ("source_partition", 10**6), ("source_offset", -1)):
        fact = fact_from_event(base, 0, 1)
        fact[field] = value
        fact["event_id"] = str(uuid.uuid4())
        forged.append(fact)
    raw = Producer(s.kafka_config(**{"enable.idempotence": True}))
    for fact in forged:
        raw.produce(s.topic_facts_by_target, serde.encode(fact), key=target.encode(), partition=p)
    assert raw.flush(30) == 0

    runs = runs_on_distinct_partitions("forged-climb", 3)
    world.publish(*[grant(run, target, when=at(minutes=4 - tier),
                          **{"resource.resource_id": f"role/Climb{tier}", "resource.privilege_tier": tier})
                    for tier, run in zip((1, 2, 3), runs, strict=True)])
    found = wait_findings(world, lambda f: bool(of(f, "AG-XRN-001", target)))
    assert len(of(found, "AG-XRN-001", target)) == 1
    dead = [m for m in consume(s, s.topic_dlq, 3, timeout=60, settle=2.0)
            if header(m.headers(), "agentgov.source.topic") == s.topic_facts_by_target]
    assert sorted((header(m.headers(), "agentgov.error.reason"), header(m.headers(), "agentgov.error.field"))
                  for m in dead) == [("invalid_value", "occurred_at"), ("invalid_value", "source_offset"),
                                     ("invalid_value", "source_partition")]
    assert {header(m.headers(), "agentgov.source.partition") for m in dead} == {str(p)}
