"""Cross-run rules (scoring/crossrun.py): tables of chains over facts from different partitions, and the
benign look-alikes that must raise nothing. Facts are built from full events with facts.fact_from_event."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.events import TransitionDict
from pipeline.facts import FACT_ACTIONS, as_event, fact_from_event, holding_key, is_delegation, partition_for
from pipeline.limits import Limits
from pipeline.scoring.context import AgentBaseline
from pipeline.scoring.crossrun import (
    BY_AGENT_RULES,
    BY_TARGET_RULES,
    PAGING_BY_TARGET,
    CrossRunContext,
    CrossRunFinding,
    correlate,
    duplicate_id_across_partitions,
    fact_order,
    finding_id,
    may_find_by_target,
    may_page,
)
from pipeline.scoring.policy import load_policy
from tests.unit.scoring_factory import T0, event

POLICY = load_policy(None)
MIN = 60_000
HUMAN: dict[str, Any] = {"decision.authority": "human", "decision.approved_by": "ciso"}


def fact(partition: int, **changes: Any) -> TransitionDict:
    ev = event(**changes)
    return as_event(fact_from_event(ev, partition, ev["step"]))


def said(ev: TransitionDict, *codes: str) -> TransitionDict:
    """``ev``'s fact as its scorer emits it when it raised ``codes`` on the event (``scorer_codes``)."""
    return {**ev, "scorer_codes": sorted(codes)}


def run_key(facts: list[TransitionDict], key: str, by_target: bool = True, holdings: tuple[TransitionDict, ...] = (),
            **cx: Any) -> list[CrossRunFinding]:
    """Feed facts of one key in event-time order, as the correlator does; collect every finding."""
    out: list[CrossRunFinding] = []
    ordered = sorted(facts, key=fact_order)
    for i, ev in enumerate(ordered):
        ctx = CrossRunContext(POLICY, key, history=ordered[:i], holdings=holdings, **cx)
        out += correlate(ev, ctx, BY_TARGET_RULES if by_target else BY_AGENT_RULES)
    return out


def tier(partition: int, t: int, minute: int, run: str, **extra: Any) -> TransitionDict:
    return fact(partition, **{"action": "assign_role", "run_id": run, "target.identity_id": "u-step",
                              "resource.system": "aws", "resource.resource_id": f"role/Step{t}",
                              "resource.privilege_tier": t, "occurred_at": T0 + minute * MIN, **extra})


def test_tier_stepping_over_three_runs_on_three_partitions() -> None:
    found = run_key([tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), tier(2, 3, 10, "r3")], "u-step")
    assert [f.spec.code for f in found] == ["AG-XRN-001"]
    f = found[0]
    assert f.run_ids == ("r1", "r2", "r3") and f.partitions == (0, 1, 2) and f.event["run_id"] == "r3"
    assert f.pattern == "tier_stepping" and "r1" in f.message and "r3" in f.message


def test_an_identity_spelt_in_several_cases_is_one_key() -> None:
    """Facts carry identity keys (as_event case-folds the agent, its principal and the target), so a climb
    spelt ``U-Step``, ``u-step`` and ``U-STEP`` is one key's chain, and a laundering chain whose hops and
    final grant spell the agents and the principal differently is still followed."""
    climb = [tier(0, 1, 0, "r1", **{"target.identity_id": "U-Step"}), tier(1, 2, 5, "r2"),
             tier(2, 3, 10, "r3", **{"target.identity_id": "U-STEP"})]
    assert {f["target"]["identity_id"] for f in climb} == {"u-step"}
    assert [f.spec.code for f in run_key(climb, "u-step")] == ["AG-XRN-001"]
    edges = _edges(("Agent-A", "agent-b"), ("AGENT-B", "Agent-C"), principal_of_first="Human-Alice")
    grant = _privileged_grant("agent-C", "HUMAN-ALICE", 30)
    found = run_key([grant], "agent-c", by_target=False, delegations=_graph(edges))
    assert [f.spec.code for f in found] == ["AG-XRN-003"] and "depth 2" in found[0].message


def test_an_identity_sent_composed_decomposed_or_full_width_is_one_key() -> None:
    """One name in Unicode forms a directory treats as one (NFC, NFD, compatibility full-width): a climb spelt
    so over three runs is one key's chain (the keys are NFKC case-folded: events.identity_key); a look-alike
    from another script stays another identity."""
    import unicodedata

    from pipeline.events import identity_key

    nfc, nfd = "jos\u00e9", unicodedata.normalize("NFD", "jos\u00e9")
    wide = "\uff2a\uff2f\uff33\u00c9"  # full-width J, O, S and a capital E acute
    assert nfc != nfd and identity_key(nfc) == identity_key(nfd) == identity_key(wide) == "jos\u00e9"
    assert identity_key("Stra\u00dfe") == identity_key("STRASSE") and identity_key("Alice") == "alice"
    assert identity_key("\u0430lice") != identity_key("alice")  # Cyrillic a: not folded
    climb = [tier(0, 1, 0, "r1", **{"target.identity_id": nfc}), tier(1, 2, 5, "r2", **{"target.identity_id": nfd}),
             tier(2, 3, 10, "r3", **{"target.identity_id": wide})]
    assert {f["target"]["identity_id"] for f in climb} == {"jos\u00e9"}
    assert [f.spec.code for f in run_key(climb, "jos\u00e9")] == ["AG-XRN-001"]


def test_a_climb_in_one_run_spelt_in_several_cases_is_the_correlators_when_its_scorer_missed_it() -> None:
    """A scorer's per-run rules compare ids as sent, so a climb inside one run spelt ``U-Step``, ``u-step`` and
    ``U-STEP`` draws no AG-ESC-002 from it (``scorer_codes`` stay empty). The correlator keys the three as one
    identity and leaves a chain to the scorer only when the scorer reported it: it reports this one."""
    climb = [tier(4, 1, 0, "r1", **{"target.identity_id": "U-Step"}), tier(4, 2, 5, "r1"),
             tier(4, 3, 10, "r1", **{"target.identity_id": "U-STEP"})]
    assert [f.spec.code for f in run_key(climb, "u-step")] == ["AG-XRN-001"]


@pytest.mark.parametrize("claimed", [2, 0])
def test_tier_stepping_over_runs_ending_in_a_privileged_name_whatever_tier_it_claims(claimed: int) -> None:
    top = tier(2, claimed, 10, "r3", **{"action": "grant_entitlement", "resource.entitlement": "Global-Admin"})
    found = run_key([tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), top], "u-step")
    assert [f.spec.code for f in found] == ["AG-XRN-001"]
    plain = tier(2, claimed, 10, "r3", **{"action": "grant_entitlement", "resource.entitlement": "crm-read"})
    assert run_key([tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), plain], "u-step") == []


@pytest.mark.parametrize("case", ["same_partition", "human_final_step", "two_steps_only"])
def test_tier_stepping_benign_look_alikes(case: str) -> None:
    parts = {"same_partition": (4, 4, 4)}.get(case, (0, 1, 2))
    last = HUMAN if case == "human_final_step" else {}
    facts = [tier(parts[0], 1, 0, "r1"), tier(parts[1], 2, 5, "r2"), tier(parts[2], 3, 10, "r3", **last)]
    if case == "two_steps_only":
        facts = facts[1:]
    if case == "same_partition":  # the scorer of partition 4 held the climb and reported it
        facts[-1] = said(facts[-1], "AG-ESC-002", "AG-AUTH-001")
    assert run_key(facts, "u-step") == []


def transient(partition: int, action: str, second: int, run: str, **extra: Any) -> TransitionDict:
    return fact(partition, **{"action": action, "run_id": run, "target.identity_id": "u-jit",
                              "resource.system": "aws", "resource.resource_id": "role/Admin",
                              "resource.entitlement": "aws-admin", "resource.privilege_tier": 3,
                              "occurred_at": T0 + second * 1000, **extra})


def test_an_account_end_closing_two_grants_the_scorer_reported_once_is_reported_whole() -> None:
    """A delete_account on one partition ends two privileged grants, the first of which had left its scorer's
    capped context: the scorer raised AG-ESC-003 once (for the second). The fact carries the code, not which
    chain, so the correlator reports both rather than leave the first to a scorer that never saw it; a single
    chain under a code the scorer raised stays the scorer's."""
    first = transient(2, "grant_entitlement", 0, "ra")
    second = transient(2, "grant_entitlement", 30, "rb", **{"resource.entitlement": "kms-admin",
                                                            "resource.resource_id": "key/Admin"})
    end = said(transient(2, "delete_account", 90, "rc", **{"resource.entitlement": None,
                                                           "resource.resource_id": "user-account"}), "AG-ESC-003")
    found = run_key([first, second, end], "u-jit")
    assert sorted(len(f.chain) for f in found) == [2, 2] and {f.spec.code for f in found} == {"AG-XRN-002"}
    revoke = said(transient(2, "revoke_entitlement", 90, "rc"), "AG-ESC-003")
    assert run_key([first, revoke], "u-jit") == []  # one chain, the scorer's


@pytest.mark.parametrize(("revoke_after_s", "grant_extra", "parts", "expected"), [
    (90, {}, (0, 3), ["AG-XRN-002"]),
    (90, {}, (3, 3), []),                       # one partition: the scorer's AG-ESC-003
    (2000, {}, (0, 3), []),                     # revoked outside the transient window (900 s)
    (90, HUMAN, (0, 3), []),                    # approved just-in-time access
    (90, {"resource.entitlement": "AWS-ADMIN "}, (0, 3), ["AG-XRN-002"]),  # names compare as name_key
])
def test_transient_privilege_across_runs(revoke_after_s: int, grant_extra: dict[str, Any],
                                         parts: tuple[int, int], expected: list[str]) -> None:
    facts = [transient(parts[0], "grant_entitlement", 0, "ra", **grant_extra),
             transient(parts[1], "revoke_entitlement", revoke_after_s, "rb")]
    if parts[0] == parts[1]:  # the scorer of that partition held the pair and reported it
        facts[1] = said(facts[1], "AG-ESC-003")
    found = run_key(facts, "u-jit")
    assert [f.spec.code for f in found] == expected
    if expected:
        assert found[0].event["action"] == "revoke_entitlement" and found[0].run_ids == ("ra", "rb")


GA = {"resource.system": "entra-id", "resource.resource_id": "role/GlobalAdmin",
      "resource.entitlement": "Global Administrator"}


@pytest.mark.parametrize(("grant_extra", "revoke_extra", "expected"), [
    ({}, {"resource.entitlement": None}, ["AG-XRN-002"]),   # the role by its resource id: gone in the directory
    ({"resource.entitlement": None}, {}, ["AG-XRN-002"]),   # the other way round
    ({}, {"resource.entitlement": None, "resource.system": "Entra-ID"}, ["AG-XRN-002"]),  # system spelt otherwise
    ({}, {"resource.resource_id": "role/Reader", "resource.entitlement": None, "resource.privilege_tier": 1}, []),
    ({}, {"resource.entitlement": "Directory Readers", "resource.privilege_tier": 1}, []),  # another label, same id
    ({}, {"resource.resource_id": "role/GlobalAdmin2", "resource.entitlement": None, "resource.privilege_tier": 1},
     []),                                                   # a role of a similar name
], ids=["revoke-by-resource-id", "grant-by-resource-id", "system-case", "another-role", "another-entitlement",
        "similar-role"])
def test_transient_privilege_across_runs_pairs_a_revoke_with_its_grant_by_either_name(
        grant_extra: dict[str, Any], revoke_extra: dict[str, Any], expected: list[str]) -> None:
    """A revoke ends a grant on its system when its access name is one of the grant's two names (entitlement,
    resource id) or the other way round (``context.same_access``): granting ``role/GlobalAdmin`` labelled
    "Global Administrator" and removing ``role/GlobalAdmin`` with no entitlement 60 s later is transient
    privilege across runs, as on one partition (AG-ESC-003, tests/unit/scoring_cases.py). A revoke of another
    role, or of another entitlement sharing only the resource id, ends nothing."""
    grant = transient(0, "assign_role", 0, "ra", **{**GA, **grant_extra})
    revoke = transient(3, "remove_role", 60, "rb", **{**GA, **revoke_extra})
    found = run_key([grant, revoke], "u-jit")
    assert [f.spec.code for f in found] == expected
    if expected:
        assert found[0].event_ids == (grant["event_id"], revoke["event_id"])


@pytest.mark.parametrize("action", ["delete_account", "disable_account"])
@pytest.mark.parametrize(("end_after_s", "grant_extra", "end_extra", "parts", "expected"), [
    (60, {}, {}, (0, 3), ["AG-XRN-002"]),
    (60, {}, {}, (3, 3), []),                                  # one partition: the scorer's AG-ESC-003
    (2000, {}, {}, (0, 3), []),                                # the account went long after the grant
    (60, HUMAN, {}, (0, 3), []),                               # approved just-in-time access
    (60, {}, {"resource.system": "entra-id"}, (0, 3), []),     # another system's account
])
def test_transient_privilege_ended_by_the_account_across_runs(action: str, end_after_s: int,
                                                                grant_extra: dict[str, Any], end_extra: dict[str, Any],
                                                                parts: tuple[int, int], expected: list[str]) -> None:
    """Disabling or deleting the account on the grant's system 60 s later ends the grant as a revoke of it
    would, though it names the account ('user-account'), not the entitlement: AG-XRN-002, and the
    correlator's entry tests let the fact through to the rule (on arrival and at the watermark)."""
    grant = transient(parts[0], "grant_entitlement", 0, "ra", **grant_extra)
    end = transient(parts[1], action, end_after_s, "rb", **{"resource.resource_id": "user-account",
                                                            "resource.entitlement": None,
                                                            "resource.privilege_tier": 0, **end_extra})
    if parts[0] == parts[1]:  # the scorer of that partition held the pair and reported it
        end = said(end, "AG-ESC-003")
    assert action in FACT_ACTIONS
    assert may_page(end, POLICY.governance, PAGING_BY_TARGET)
    assert may_find_by_target(end, POLICY.governance, copies=False, left=False)
    found = run_key([grant, end], "u-jit")
    assert [f.spec.code for f in found] == expected
    if expected:
        assert found[0].chain == (grant, end) and found[0].run_ids == ("ra", "rb")
        assert f"by {action} on 'aws'" in found[0].message
        assert [f.spec.code for f in correlate(end, CrossRunContext(POLICY, "u-jit", history=[grant]),
                                               PAGING_BY_TARGET)] == expected  # the early page


IDS = ("aaaaaaaa-0000-4000-8000-000000000000", "bbbbbbbb-0000-4000-8000-000000000000",
       "cccccccc-0000-4000-8000-000000000000")


@pytest.mark.parametrize("runs", [("r1", "r2", "r3"), ("r3", "r2", "r1"), ("zz", "aa", "mm")])
@pytest.mark.parametrize("ids", [IDS, tuple(reversed(IDS))])
def test_chains_stamped_with_one_millisecond_are_found_whatever_their_ids(ids: tuple[str, ...],
                                                                          runs: tuple[str, ...]) -> None:
    """Facts of one millisecond have no order of their own; ordered by the ids (or the run ids) the agent
    picks, a tier climb or a grant and its revoke stamped alike hid from rules that read only the facts before
    the one judged. ``tie_rank`` orders them so the chain completes: grants by tier, then revokes; the per-run
    rules the correlator replays sort their history so too (``escalation.in_event_time``)."""
    climb = [tier(p, t, 0, runs[t - 1], event_id=ids[t - 1]) for p, t in ((0, 1), (1, 2), (2, 3))]
    assert [f.spec.code for f in run_key(climb, "u-step")] == ["AG-XRN-001"]
    jit = [transient(0, "grant_entitlement", 0, "ra", event_id=ids[0]),
           transient(3, "revoke_entitlement", 0, "rb", event_id=ids[1])]
    assert [f.spec.code for f in run_key(jit, "u-jit")] == ["AG-XRN-002"]
    edges = [dict(e, occurred_at=T0 + 30 * MIN) for e in _edges(("agent-a", "agent-b"))]
    grant = _privileged_grant("agent-b", "human-alice", 30, event_id=ids[0])
    found = correlate(grant, CrossRunContext(POLICY, "agent-b", delegations=_graph(edges)), BY_AGENT_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-003"]  # the edge of the grant's millisecond counts


def test_out_of_order_arrival_gives_the_same_findings() -> None:
    facts = [tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), tier(2, 3, 10, "r3")]
    a = run_key(facts, "u-step")
    b = run_key(list(reversed(facts)), "u-step")  # run_key orders by event time, like the watermark does
    assert [f.finding_id for f in a] == [f.finding_id for f in b] != []


def _edges(*hops: tuple[str, str], start: int = 0, principal_of_first: str = "human-alice") -> list[TransitionDict]:
    out = []
    for i, (src, dst) in enumerate(hops):
        out.append(fact(i % 6, **{"action": "assign_role", "run_id": f"deleg-{i}", "agent.agent_id": src,
                                  "agent.on_behalf_of": principal_of_first if i == 0 else None,
                                  "target.identity_id": dst, "target.identity_type": "agent",
                                  "resource.system": "entra-id", "resource.resource_id": "role/RoleAdmin",
                                  "resource.privilege_tier": 2, "occurred_at": T0 + (start + i) * MIN}))
    return out


def _graph(edges: list[TransitionDict]) -> Any:
    def into(agent: str) -> list[TransitionDict]:
        return sorted((e for e in edges if e["target"]["identity_id"] == agent),
                      key=fact_order)
    return into


def _privileged_grant(by: str, to: str, minute: int, **extra: Any) -> TransitionDict:
    return fact(5, **{"action": "grant_entitlement", "run_id": "final", "agent.agent_id": by,
                      "agent.on_behalf_of": None, "target.identity_id": to, "resource.system": "aws",
                      "resource.resource_id": "acct-prod", "resource.entitlement": "aws-admin",
                      "resource.privilege_tier": 3, "occurred_at": T0 + minute * MIN, **extra})


@pytest.mark.parametrize(("action", "system", "expected"), [
    ("delete_account", "entra-id", []), ("disable_account", "Entra-ID", []),   # the delegate's account went
    ("delete_account", "github", ["AG-XRN-003"]),                               # another system's: the edge stays
])
def test_an_edge_ends_with_the_delegates_account_on_its_system(action: str, system: str,
                                                              expected: list[str]) -> None:
    """agent-a (for alice) gave agent-b RoleAdmin on entra-id; agent-b's entra-id account was then deleted (or
    disabled): the power went with it, so agent-b granting alice aws-admin later is no laundering."""
    edge = _edges(("agent-a", "agent-b"))[0]
    gone = fact(3, **{"action": action, "run_id": "offboard-b", "agent.agent_id": "agent-admin",
                      "target.identity_id": "agent-b", "target.identity_type": "agent", "resource.system": system,
                      "resource.resource_id": "user-account", "resource.privilege_tier": 0,
                      "occurred_at": T0 + 10 * MIN})
    grant = _privileged_grant("agent-b", "human-alice", 30)
    found = correlate(grant, CrossRunContext(POLICY, "agent-b", delegations=_graph([edge, gone])), BY_AGENT_RULES)
    assert [f.spec.code for f in found] == expected


def test_laundering_through_an_agent_acting_for_the_delegate_is_followed() -> None:
    """agent-a (for alice) gives the service identity svc-b RoleAdmin; agent-c, acting as svc-b, hands it on to
    agent-d; agent-d grants alice aws-admin. The middle hop's agent used its principal's power: the chain is
    followed through the principal, as through the final grant's, and named whole."""
    first = _edges(("agent-a", "svc-b"))[0]
    first = {**first, "target": {**first["target"], "identity_type": "service"}}
    second = _edges(("agent-c", "agent-d"), start=5, principal_of_first="svc-b")[0]
    edges = [first, second]
    grant = _privileged_grant("agent-d", "human-alice", 30)
    found = correlate(grant, CrossRunContext(POLICY, "agent-d", delegations=_graph(edges)), BY_AGENT_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-003"]
    assert [e["event_id"] for e in found[0].chain] == [first["event_id"], second["event_id"], grant["event_id"]]
    # without the first edge, svc-b never had the power: nothing
    alone = correlate(grant, CrossRunContext(POLICY, "agent-d", delegations=_graph([second])), BY_AGENT_RULES)
    assert alone == []


@pytest.mark.parametrize(("hops", "to", "depth"), [
    ([("agent-a", "agent-b")], "human-alice", 1),
    ([("agent-a", "agent-b"), ("agent-b", "agent-c")], "human-alice", 2),
    ([("agent-a", "agent-b"), ("agent-b", "agent-c"), ("agent-c", "agent-d")], "human-alice", 3),
    ([("agent-a", "agent-b"), ("agent-b", "agent-c"), ("agent-c", "agent-d")], "agent-b", 2),
])
def test_delegation_laundering_names_every_hop(hops: list[tuple[str, str]], to: str, depth: int) -> None:
    edges = _edges(*hops)
    last = hops[-1][1]
    grant = _privileged_grant(last, to, 30)
    found = run_key([grant], last, by_target=False, delegations=_graph(edges))
    assert [f.spec.code for f in found] == ["AG-XRN-003"]
    f = found[0]
    assert f"depth {depth}" in f.message and f.event is grant and len(f.chain) == depth + 1
    for src, dst in hops[-depth:]:
        assert repr(src) in f.message and repr(dst) in f.message


@pytest.mark.parametrize("via", ["a_delegate_labelled_service", "the_granting_agents_principal"])
def test_delegation_laundering_through_a_service_identity(via: str) -> None:
    """agent-a (for human-alice) gives RoleAdmin to agent-b labelled a service identity, or to svc-b, the
    principal agent-b acts for; agent-b then grants aws-admin to human-alice: power handed down came back up."""
    delegate = "agent-b" if via == "a_delegate_labelled_service" else "svc-b"
    edge = fact(0, **{"action": "assign_role", "run_id": "deleg-0", "agent.agent_id": "agent-a",
                      "agent.on_behalf_of": "human-alice", "target.identity_id": delegate,
                      "target.identity_type": "service", "resource.system": "entra-id",
                      "resource.resource_id": "role/RoleAdmin", "resource.privilege_tier": 2, "occurred_at": T0})
    assert is_delegation(edge_fact := fact_from_event(event(**{
        "action": "assign_role", "agent.agent_id": "agent-a", "target.identity_id": delegate,
        "target.identity_type": "service"}), 0, 1)) and edge_fact["target_type"] == "service"
    grant = _privileged_grant("agent-b", "human-alice", 30, **({} if delegate == "agent-b"
                                                              else {"agent.on_behalf_of": "svc-b"}))
    found = correlate(grant, CrossRunContext(POLICY, "agent-b", delegations=_graph([edge])), BY_AGENT_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-003"]
    assert "'agent-a' gave 'svc-b'" in found[0].message if delegate == "svc-b" else "'agent-a' gave 'agent-b'" \
        in found[0].message
    # benign look-alike: the same grant to someone the chain never reached
    other = _privileged_grant("agent-b", "human-bob", 30, **({} if delegate == "agent-b"
                                                            else {"agent.on_behalf_of": "svc-b"}))
    assert correlate(other, CrossRunContext(POLICY, "agent-b", delegations=_graph([edge])), BY_AGENT_RULES) == []


def _membership(by: str, member: str, group: str, minute: int, action: str = "add_group_member") -> TransitionDict:
    """``by`` adds ``member`` (an agent or service identity) to ``group`` (or removes it), ``minute`` on."""
    return fact(1, **{"action": action, "run_id": f"member-{member}-{minute}", "agent.agent_id": by,
                      "agent.on_behalf_of": None, "target.identity_id": member, "target.identity_type": "agent",
                      "resource.system": "entra-id", "resource.resource_id": group, "resource.entitlement": None,
                      "resource.privilege_tier": 1, "occurred_at": T0 + minute * MIN})


def _group_grant(by: str, group: str, minute: int, action: str = "assign_role", **extra: Any) -> TransitionDict:
    """``by`` (for human-alice) grants ``group`` RoleAdmin (a group is labelled a service identity), or revokes it."""
    return fact(2, **{"action": action, "run_id": f"group-{group}-{minute}", "agent.agent_id": by,
                      "agent.on_behalf_of": "human-alice", "target.identity_id": group,
                      "target.identity_type": "service", "resource.system": "entra-id",
                      "resource.resource_id": "role/RoleAdmin", "resource.entitlement": None,
                      "resource.privilege_tier": 2, "occurred_at": T0 + minute * MIN, **extra})


def test_delegation_laundering_through_a_group_membership() -> None:
    """agent-a (for alice) grants the group grp-ops RoleAdmin; agent-x, another run, adds agent-b to grp-ops
    (spelt otherwise); agent-b then grants alice aws-admin. agent-b held RoleAdmin through the group: power
    handed down came back up, the group a hop of the chain, and every hop named."""
    edges = [_group_grant("agent-a", "grp-ops", 0), _membership("agent-x", "agent-b", "GRP-Ops", 5)]
    grant = _privileged_grant("agent-b", "human-alice", 30)
    found = run_key([grant], "agent-b", by_target=False, delegations=_graph(edges))
    assert [f.spec.code for f in found] == ["AG-XRN-003"]
    f = found[0]
    assert [e["event_id"] for e in f.chain] == [edges[0]["event_id"], edges[1]["event_id"], grant["event_id"]]
    assert "depth 2" in f.message and "'agent-x' added 'agent-b' to group 'GRP-Ops'" in f.message
    assert "'agent-a' gave 'grp-ops' 'role/RoleAdmin'" in f.message and "agent-a -> grp-ops -> agent-b" in f.message


def test_delegation_laundering_through_nested_groups() -> None:
    """grp-outer holds RoleAdmin from agent-a; grp-inner was made a member of grp-outer, and agent-b a member
    of grp-inner: agent-b's grant to alice is laundering at depth 3, and cut off by a depth limit of 2."""
    edges = [_group_grant("agent-a", "grp-outer", 0), _membership("agent-x", "grp-inner", "grp-outer", 2),
             _membership("agent-y", "agent-b", "grp-inner", 4)]
    grant = _privileged_grant("agent-b", "human-alice", 30)
    found = correlate(grant, CrossRunContext(POLICY, "agent-b", delegations=_graph(edges)), BY_AGENT_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-003"] and "depth 3" in found[0].message
    policy = load_policy(None)
    object.__setattr__(policy.policy.escalation, "max_delegation_depth", 2)
    try:
        assert correlate(grant, CrossRunContext(policy, "agent-b", delegations=_graph(edges)), BY_AGENT_RULES) == []
    finally:
        object.__setattr__(policy.policy.escalation, "max_delegation_depth", 8)


@pytest.mark.parametrize("case", ["member_removed", "group_role_revoked", "member_added_after", "unrelated_target",
                                  "other_group", "human_approved", "group_granted_after"])
def test_delegation_laundering_through_a_group_benign(case: str) -> None:
    """Look-alikes: agent-b left the group, or the group lost the role, before the grant; agent-b joined after
    it; the grant went to someone the chain never reached; agent-b is a member of another group; a human
    approved it; the group got the role after the grant."""
    group_at = 40 if case == "group_granted_after" else 0
    edges = [_group_grant("agent-a", "grp-ops", group_at),
             _membership("agent-x", "agent-b", "grp-other" if case == "other_group" else "grp-ops",
                         40 if case == "member_added_after" else 5)]
    if case == "member_removed":
        edges.append(_membership("agent-z", "agent-b", "grp-ops", 10, action="remove_group_member"))
    if case == "group_role_revoked":
        edges.append(_group_grant("agent-z", "grp-ops", 10, action="remove_role"))
    grant = _privileged_grant("agent-b", "human-bob" if case == "unrelated_target" else "human-alice", 30,
                              **(HUMAN if case == "human_approved" else {}))
    assert correlate(grant, CrossRunContext(POLICY, "agent-b", delegations=_graph(edges)), BY_AGENT_RULES) == []


@pytest.mark.parametrize("case", ["human_approved", "edge_after_grant", "unrelated_target", "too_deep",
                                  "not_privileged", "edge_revoked", "edge_revoked_by_a_cleanup_agent",
                                  "edge_given_up_by_its_delegate", "edge_revoked_spelled_otherwise"])
def test_delegation_laundering_benign(case: str) -> None:
    hops = [("agent-a", "agent-b"), ("agent-b", "agent-c"), ("agent-c", "agent-d")]
    edges = _edges(*hops, start=40 if case == "edge_after_grant" else 0)
    extra: dict[str, Any] = HUMAN if case == "human_approved" else {}
    if case == "not_privileged":
        extra = {"resource.entitlement": "read-only", "resource.privilege_tier": 1}
    to = "human-bob" if case == "unrelated_target" else "human-alice"
    if case.startswith(("edge_revoked", "edge_given_up")):
        # The access is agent-c's: whoever revokes it (its grantor, a clean-up agent, agent-c) ends the edge.
        by = {"edge_revoked": "agent-b", "edge_revoked_by_a_cleanup_agent": "agent-z"}.get(case, "agent-c")
        role = " ROLE/roleadmin" if case.endswith("spelled_otherwise") else "role/RoleAdmin"  # as name_key folds
        revoke = fact(2, **{"action": "remove_role", "run_id": "rv", "agent.agent_id": by,
                            "target.identity_id": "agent-c", "target.identity_type": "agent",
                            "resource.system": "entra-id", "resource.resource_id": role,
                            "occurred_at": T0 + 20 * MIN})
        edges.append(revoke)
    grant = _privileged_grant("agent-d", to, 30, **extra)
    policy = POLICY
    if case == "too_deep":
        policy = load_policy(None)
        object.__setattr__(policy.policy.escalation, "max_delegation_depth", 2)
    found = correlate(grant, CrossRunContext(policy, "agent-d", delegations=_graph(edges)), BY_AGENT_RULES)
    if case == "too_deep":
        object.__setattr__(policy.policy.escalation, "max_delegation_depth", 8)
    assert found == []


def _edge_records(*hops: tuple[str, str], start: int = 0) -> list[dict[str, Any]]:
    """The delegation topic's records of ``hops`` (what the graph's follower reads), ``start`` minutes on."""
    out = []
    for i, (src, dst) in enumerate(hops):
        ev = event(**{"action": "assign_role", "run_id": f"deleg-{i}", "agent.agent_id": src,
                      "agent.on_behalf_of": "human-alice" if i == 0 else None, "target.identity_id": dst,
                      "target.identity_type": "agent", "resource.system": "entra-id",
                      "resource.resource_id": "role/RoleAdmin", "resource.privilege_tier": 2,
                      "occurred_at": T0 + (start + i) * MIN})
        out.append(dict(fact_from_event(ev, i % 6, ev["step"])))
    return out


def _correlator_with_graph() -> tuple[Any, Any, list[tuple[Any, ...]]]:
    """The judging half of a Correlator with a real delegation graph (not following any topic: edges are
    added by hand, as its follower would) and a producer that keeps what it is given."""
    from types import SimpleNamespace

    from pipeline.delegations import DelegationGraph
    from pipeline.facts import FINDING
    from pipeline.schemas import SchemaSet
    from pipeline.serde import Serde
    from pipeline.settings import Settings

    c = _bare_correlator()
    c.settings = Settings.load(kafka_bootstrap="127.0.0.1:1")
    c.graph = DelegationGraph(c.settings, Serde(SchemaSet.load()))
    c.states, c._edges_known, c.baselines = {}, {}, lambda agent: None
    c.out = Serde(SchemaSet.load(), record=FINDING)
    produced: list[tuple[Any, ...]] = []
    c.checkpoint = SimpleNamespace(producer=SimpleNamespace(produce=lambda *a, **k: produced.append(a)))
    return c, c.graph, produced


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_an_edge_read_after_the_grant_it_completes_still_finds_the_laundering(depth: int) -> None:
    """The graph is as complete as its follower has read: an edge granted before a grant can be read after the
    grant was judged (its run scored later). Reading it judges that grant again, by laundering alone: the
    chain is found and published once, naming every hop, whatever the order the edges and the grant came in."""
    from pipeline.correlator import _Tally
    from pipeline.keyed_state import KeyedState

    c, graph, produced = _correlator_with_graph()
    hops = [("agent-a", "agent-b"), ("agent-b", "agent-c"), ("agent-c", "agent-d")][:depth]
    last = hops[-1][1]
    state = c._hold(c.settings.topic_facts_by_agent, partition_for(last, c.settings.facts_partitions),
                    KeyedState(by_target=False))
    grant = _privileged_grant(last, "human-alice", 30)
    assert c._judge(state, last, grant) == []  # judged before any edge was read
    state.apply(last, grant, 86_400_000)
    records = _edge_records(*hops)
    for record in records[:-1]:  # the first hops are read; the chain is not complete yet
        graph.add(record)
    tally = _Tally()
    c._late_edges(T0 + 31 * MIN, tally)
    assert tally.found == [] and produced == []
    graph.add(records[-1])
    c._late_edges(T0 + 32 * MIN, tally)
    assert [f.spec.code for f in tally.found] == ["AG-XRN-003"] and len(produced) == 1
    assert tally.late_edges == 1  # the edge that reached the judged grant; the first ones reached none yet
    f = tally.found[0]
    assert f"depth {depth}" in f.message and f.event is grant and len(f.chain) == depth + 1
    assert f.finding_id == run_key([grant], last, by_target=False, delegations=graph.into)[0].finding_id
    graph.add(records[0])  # a redelivered edge record: not a new edge
    graph.add(_edge_records(("agent-x", "agent-a"))[0])  # a new edge upstream: the same chain is not published again
    c._late_edges(T0 + 33 * MIN, tally)
    assert len(tally.found) == 1 and len(produced) == 1


def test_a_group_grant_read_after_the_members_grant_still_finds_the_laundering() -> None:
    """The group's RoleAdmin edge is read after agent-b's grant was judged (the group's run scored later): the
    graph's downstream of the group reaches its member, whose grant is judged again and the chain found."""
    from pipeline.correlator import _Tally
    from pipeline.keyed_state import KeyedState

    c, graph, produced = _correlator_with_graph()
    state = c._hold(c.settings.topic_facts_by_agent, partition_for("agent-b", c.settings.facts_partitions),
                    KeyedState(by_target=False))
    grant = _privileged_grant("agent-b", "human-alice", 30)
    member = event(**{"action": "add_group_member", "run_id": "member", "agent.agent_id": "agent-x",
                      "target.identity_id": "agent-b", "target.identity_type": "agent", "resource.system": "entra-id",
                      "resource.resource_id": "grp-ops", "resource.entitlement": None, "occurred_at": T0 + 5 * MIN})
    role = event(**{"action": "assign_role", "run_id": "group-role", "agent.agent_id": "agent-a",
                    "agent.on_behalf_of": "human-alice", "target.identity_id": "grp-ops",
                    "target.identity_type": "service", "resource.system": "entra-id",
                    "resource.resource_id": "role/RoleAdmin", "resource.privilege_tier": 2, "occurred_at": T0})
    graph.add(dict(fact_from_event(member, 1, 1)))
    assert c._judge(state, "agent-b", grant) == []  # judged before the group's edge was read
    state.apply("agent-b", grant, 86_400_000)
    tally = _Tally()
    c._late_edges(T0 + 31 * MIN, tally)
    assert tally.found == []
    graph.add(dict(fact_from_event(role, 2, 1)))
    c._late_edges(T0 + 32 * MIN, tally)
    assert [f.spec.code for f in tally.found] == ["AG-XRN-003"] and len(produced) == 1
    assert [e["event_id"] for e in tally.found[0].chain] == [role["event_id"], member["event_id"], grant["event_id"]]


@pytest.mark.parametrize("case", ["edge_after_grant", "other_partition", "held_after_the_edges", "unrelated_target"])
def test_an_edge_read_late_judges_nothing_it_cannot_complete(case: str) -> None:
    """Benign look-alikes of the late edge: the edge granted after the grant; the granting agent's facts on
    a partition this correlator does not own; a state taken over (replayed) after the edges were read,
    whose facts the previous owner judged with them; a grant to someone unrelated."""
    from pipeline.correlator import _Tally
    from pipeline.keyed_state import KeyedState

    c, graph, produced = _correlator_with_graph()
    hops = [("agent-a", "agent-b"), ("agent-b", "agent-c")]
    n = c.settings.facts_partitions
    part = partition_for("agent-c", n) if case != "other_partition" else (partition_for("agent-c", n) + 1) % n
    records = _edge_records(*hops, start=40 if case == "edge_after_grant" else 0)
    if case == "held_after_the_edges":
        for record in records:
            graph.add(record)
    state = c._hold(c.settings.topic_facts_by_agent, part, KeyedState(by_target=False))
    grant = _privileged_grant("agent-c", "human-bob" if case == "unrelated_target" else "human-alice", 30)
    state.apply("agent-c", grant, 86_400_000)
    if case != "held_after_the_edges":
        for record in records:
            graph.add(record)
    tally = _Tally()
    c._late_edges(T0 + 50 * MIN, tally)
    assert tally.found == [] and produced == []


def test_the_delegation_graph_walks_downstream_within_the_hops_asked() -> None:
    from pipeline.delegations import DelegationGraph
    from pipeline.schemas import SchemaSet
    from pipeline.serde import Serde
    from pipeline.settings import Settings

    graph = DelegationGraph(Settings.load(kafka_bootstrap="127.0.0.1:1"), Serde(SchemaSet.load()))
    for record in _edge_records(("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")):  # a cycle back to b
        graph.add(record)
    assert graph.downstream("b", 0) == {"b"}
    assert graph.downstream("b", 1) == {"b", "c"}
    assert graph.downstream("b", 5) == {"b", "c", "d"}
    assert graph.downstream("a", 2) == {"a", "b", "c"}
    # a -> b was made on behalf of human-alice: her power went to b too (an edge read late re-judges b's grants)
    assert graph.downstream("human-alice", 1) == {"human-alice", "b"}
    assert graph.read == 4 and [e["target"]["identity_id"] for e in graph.since(1, 3)] == ["c", "d"]


def test_the_delegation_follower_takes_edges_of_any_age_and_refuses_forged_ones() -> None:
    """Audit P4: a fact stamped at int64 max on the delegations topic became an edge. One from the future
    beyond the skew is refused (logged and counted, not an edge), as are bytes that do not decode; an old edge
    still counts (the topic is compacted: a delegation granted long ago still delegates)."""
    from prometheus_client import CollectorRegistry

    from pipeline.delegations import DelegationGraph
    from pipeline.facts import FACT
    from pipeline.metrics import Metrics
    from pipeline.schemas import SchemaSet
    from pipeline.serde import Serde
    from pipeline.settings import Settings

    serde = Serde(SchemaSet.load(), record=FACT)
    metrics = Metrics(CollectorRegistry())
    graph = DelegationGraph(Settings.load(kafka_bootstrap="127.0.0.1:1"), serde, metrics)
    old, forged = _edge_records(("a", "b"), ("b", "c"))
    old["occurred_at"], forged["occurred_at"] = T0 - 3 * 365 * 86_400_000, 2**63 - 1
    assert graph.take(serde.encode(forged), 1) is False
    assert graph.take(b"\x00garbage", 2) is False
    assert graph.read == 0 and graph.downstream("b", 1) == {"b"}
    assert metrics.follower_refused.labels(follower="delegations")._value.get() == 2
    assert graph.take(serde.encode(old), 3) is True
    assert graph.read == 1 and graph.downstream("a", 1) == {"a", "b"}


BASELINE = AgentBaseline("agent-burst", events=1000, grants_per_hour=1.7)


def _burst(partitions: int, n: int = 40) -> list[TransitionDict]:
    return [fact(i % partitions, **{"action": "grant_entitlement", "run_id": f"burst-{i}",
                                    "agent.agent_id": "agent-burst", "target.identity_id": f"u{i}",
                                    "resource.entitlement": "crm-read", "occurred_at": T0 + i * 45_000})
            for i in range(n)]


def nesting(parts: tuple[int, int, int], grant: dict[str, Any] | None = None, agent: str = "agent-rogue",
            creator: str | None = None) -> list[TransitionDict]:
    """Group nesting in three runs: create a group, add the agent's principal, grant the group tier 3."""
    steps: list[dict[str, Any]] = [
        {"action": "create_group", "target.identity_id": "grp-tmp", "target.identity_type": "service",
         "resource.resource_id": "grp-tmp", "resource.privilege_tier": 0},
        {"action": "add_group_member", "target.identity_id": "h-principal", "target.identity_type": "human",
         "resource.resource_id": "grp-tmp"},
        {"action": "assign_role", "target.identity_id": "grp-tmp", "target.identity_type": "service",
         "resource.resource_id": "role/GlobalAdmin", "resource.privilege_tier": 3, **(grant or {})},
    ]
    return [fact(p, **{**s, "run_id": f"r-nest-{i}", "occurred_at": T0 + i * 5 * MIN, "step": 1,
                       "agent.agent_id": creator if (creator and i == 0) else agent,
                       "agent.on_behalf_of": "h-principal"})
            for i, (p, s) in enumerate(zip(parts, steps, strict=True))]


def test_group_nesting_over_three_runs_by_one_agent() -> None:
    found = run_key(nesting((0, 2, 4)), "agent-rogue", by_target=False)
    assert [f.spec.code for f in found] == ["AG-XRN-008"]
    f = found[0]
    assert f.pattern == "group_nesting" and f.run_ids == ("r-nest-0", "r-nest-1", "r-nest-2")
    assert f.partitions == (0, 2, 4) and f.event["action"] == "assign_role"


@pytest.mark.parametrize("case", ["same_partition", "human_final_step", "someone_else_created_it"])
def test_group_nesting_across_runs_benign_look_alikes(case: str) -> None:
    facts = nesting((3, 3, 3) if case == "same_partition" else (0, 2, 4),  # one partition: the scorer's AG-ESC-001
                    grant=HUMAN if case == "human_final_step" else None,
                    creator="agent-other" if case == "someone_else_created_it" else None)
    mine = [f for f in facts if f["agent"]["agent_id"] == "agent-rogue"]  # the agent's key sees its own facts
    if case == "same_partition":  # the scorer of partition 3 held the chain and reported it
        mine[-1] = said(mine[-1], "AG-ESC-001")
    assert run_key(mine, "agent-rogue", by_target=False) == []


@pytest.mark.parametrize(("add_to", "grant_to", "expected"), [
    ("GRP-TMP", "Grp-Tmp", ["AG-XRN-008"]),   # the group spelt otherwise in each step: one group
    ("grp-tmp-2", "grp-tmp", []),             # a member added to a group of a similar name
    ("grp-tmp", "grp-tmp-2", []),             # privilege granted to a group of a similar name
], ids=["case-variants", "similar-group-added-to", "similar-group-granted"])
def test_group_nesting_over_runs_matches_the_group_without_case(add_to: str, grant_to: str,
                                                                 expected: list[str]) -> None:
    """A group is an identity of the directory, matched without case: ``create_group grp-tmp``, a member added
    to ``GRP-TMP`` and GlobalAdmin granted to ``Grp-Tmp`` is group nesting. The correlator's facts fold the
    target (as_event) but not the resource id the member is added to: the rule and ``KeyedState``'s index of
    created groups fold it (``created_before``, which gates the rule, says so too)."""
    from pipeline.keyed_state import KeyedState

    create, add, grant = nesting((0, 2, 4))
    add = fact(2, **{"action": "add_group_member", "run_id": "r-nest-1", "step": 1, "occurred_at": T0 + 5 * MIN,
                     "agent.agent_id": "agent-rogue", "agent.on_behalf_of": "h-principal",
                     "target.identity_id": "h-principal", "target.identity_type": "human",
                     "resource.resource_id": add_to})
    grant = dict(grant, target=dict(grant["target"], identity_id=grant_to.lower()))  # as_event folds the target
    found = run_key([create, add, grant], "agent-rogue", by_target=False)
    assert [f.spec.code for f in found] == expected
    state = KeyedState(by_target=False)
    state.add(fact(0, **{"action": "create_group", "occurred_at": T0, "agent.agent_id": "agent-rogue",
                         "target.identity_id": "grp-tmp", "resource.resource_id": "Grp-Tmp"}))
    assert state.created_before("agent-rogue", add, 3_600_000) is (add_to.lower() == "grp-tmp")
    assert state.created_before("agent-rogue", grant, 3_600_000) is (grant_to.lower() == "grp-tmp")


def decisions(stale_per_partition: list[tuple[int, int]], agent: str = "agent-drift") -> list[TransitionDict]:
    """(partition, stale) per access change, a minute apart, one run each; stale ones under version 5."""
    return [fact(p, **{"run_id": f"r-pol-{i}", "agent.agent_id": agent, "target.identity_id": f"u-pol-{i}",
                       "policy.policy_version": "5" if stale else "7", "occurred_at": T0 + i * MIN})
            for i, (p, stale) in enumerate(stale_per_partition)]


WARM = AgentBaseline("agent-drift", events=500, grants_per_hour=30.0, stale_policy_share=0.0)


def test_stale_policy_share_over_partitions_is_reported_once_per_crossing() -> None:
    # 20 decisions over 6 partitions, every third stale: 7/20 = 35% > 20%, no partition over 20% of >= 10
    facts = decisions([(i % 6, i % 3 == 0) for i in range(21)])
    found = run_key(facts, "agent-drift", by_target=False, baseline=WARM)
    assert [f.spec.code for f in found] == ["AG-XRN-009"]
    f = found[0]
    assert all(h["policy"]["policy_version"] == "5" for h in f.chain) and len(set(f.partitions)) > 1
    assert "unapproved policy versions" in f.message


@pytest.mark.parametrize(("case", "stale_per_partition", "baseline"), [
    ("under the threshold", [(i % 6, i % 10 == 0) for i in range(20)], WARM),
    ("one partition crosses alone", [(2, True)] * 12, WARM),   # the scorer's AG-DRF-006
    ("cold baseline", [(i % 6, i % 3 == 0) for i in range(21)], AgentBaseline("agent-drift", events=3)),
    ("no baseline", [(i % 6, i % 3 == 0) for i in range(21)], None),
    ("all approved", [(i % 6, False) for i in range(21)], WARM),
])
def test_stale_policy_share_benign(case: str, stale_per_partition: list[tuple[int, bool]],
                                   baseline: AgentBaseline | None) -> None:
    facts = decisions(stale_per_partition)
    assert run_key(facts, "agent-drift", by_target=False, baseline=baseline) == [], case


def test_count_findings_name_at_most_the_latest_hundred_events() -> None:
    """A busy agent's crossing can involve hundreds of events; the finding names the latest 100."""
    # 400 approved decisions over 60 partitions (fewer than 10 each), then stale ones: the share crosses
    # 20% at the 101st stale decision
    facts = decisions([(i % 60, i >= 400) for i in range(520)])
    facts = [dict(f, occurred_at=T0 + i * 5000) for i, f in enumerate(facts)]  # 5 s apart: one window
    found = run_key(facts, "agent-drift", by_target=False, baseline=WARM)  # type: ignore[arg-type]
    [drift] = [f for f in found if f.spec.code == "AG-XRN-009"]
    assert len(drift.chain) == 100 and drift.chain[-1]["event_id"] == facts[500]["event_id"]
    assert "101 of its last 501" in drift.message and "the latest 100 are named" in drift.message
    # grant rate: a baseline of 50/h needs 151 grants in the hour to cross
    burst = [dict(f, occurred_at=T0 + i * 20_000)
             for i, f in enumerate(decisions([(i % 6, False) for i in range(151)]))]
    rate = run_key(burst, "agent-drift", by_target=False,  # type: ignore[arg-type]
                   baseline=AgentBaseline("agent-drift", events=500, grants_per_hour=50.0))
    [f] = [f for f in rate if f.spec.code == "AG-XRN-004"]
    assert len(f.chain) == 100 and "made 151 grants" in f.message


def _indexed_and_scanned(facts: list[TransitionDict], retain_ms: int, reload_at: int | None = None
                         ) -> tuple[list[tuple[str, str, tuple[str, ...]]], list[tuple[str, str, tuple[str, ...]]]]:
    """AG-XRN-009 over ``facts`` (one agent) judged twice per fact, as the correlator applies them: with the
    state's indexed counts (``decision_window``) and by scanning the key's history (no ``decision_window``)."""
    import functools

    from pipeline.keyed_state import KeyedState, order
    from pipeline.scoring.crossrun import DecisionWindow, _decision_window, stale_policy_across_partitions
    from pipeline.scoring.rules import stale_decision

    policy = POLICY
    state = KeyedState(by_target=False, stale_of=functools.partial(stale_decision, policy.governance))
    drift_ms = policy.governance.drift.rate_window_seconds * 1000
    indexed, scanned = [], []
    for i, ev in enumerate(sorted(facts, key=order)):  # the correlator's event-time order
        if i == reload_at:  # a policy reload indexes the state again (here: with the same approvals)
            state.restale(functools.partial(stale_decision, policy.governance))
        state.max_seen_ms = max(state.max_seen_ms, ev["occurred_at"])
        if state.key_of(ev) != "agent-drift":  # another agent's fact in the same partition's state
            state.apply(state.key_of(ev), ev, retain_ms)
            continue
        window: DecisionWindow = state.decision_window("agent-drift", ev, drift_ms)
        scan = CrossRunContext(policy, "agent-drift", baseline=WARM,
                               history=state.before("agent-drift", ev, drift_ms))
        counted = _decision_window(ev, scan)  # the counts themselves, not only the findings they lead to
        assert (window.decisions, window.stale, window.own_decisions, window.own_stale, window.stale_partitions,
                [h["event_id"] for h in window.latest_stale]) == (
                counted.decisions, counted.stale, counted.own_decisions, counted.own_stale,
                counted.stale_partitions, [h["event_id"] for h in counted.latest_stale]), i
        for out, cx in ((indexed, CrossRunContext(policy, "agent-drift", baseline=WARM, decision_window=window)),
                        (scanned, scan)):
            out += [(f.finding_id, f.message, f.event_ids) for f in stale_policy_across_partitions(ev, cx)]
        state.apply("agent-drift", ev, retain_ms)
    return indexed, scanned


@pytest.mark.parametrize("seed", range(6))
def test_stale_share_indexed_counts_equal_a_scan_of_the_window(seed: int) -> None:
    """The correlator's O(log n) counts (KeyedState.decision_window) give the very findings the rule gets by
    scanning the window: crossings, messages, evidence, with copies of an event_id on other partitions,
    retention cutting the window, and a policy reload in between."""
    import random

    rng = random.Random(seed)
    facts: list[TransitionDict] = []
    t = T0
    for i in range(400):
        t += rng.choice((1_000, 20_000, 60_000, 300_000))
        facts.append(fact(rng.randrange(6), **{
            "run_id": f"r-idx-{i}", "agent.agent_id": "agent-drift", "target.identity_id": f"u-idx-{i}",
            "policy.policy_version": "5" if rng.random() < rng.choice((0.1, 0.3, 0.6)) else "7",
            "occurred_at": t}))
        if rng.random() < 0.05:  # the same event again, on another partition (a replay or a rewritten copy)
            copy = dict(facts[-1], source_partition=(facts[-1]["source_partition"] + 1) % 6)
            facts.append(copy)  # type: ignore[arg-type]
        if rng.random() < 0.05:  # a copy rewritten to name another agent: in the same state, another key
            other = dict(facts[-1], agent=dict(facts[-1]["agent"], agent_id="agent-other"),
                         source_partition=rng.randrange(6))
            facts.append(other)  # type: ignore[arg-type]
    indexed, scanned = _indexed_and_scanned(facts, retain_ms=rng.choice((3_600_000, 7_200_000)), reload_at=200)
    assert indexed == scanned
    assert seed > 2 or indexed, "the seeds must include crossings, or the comparison says little"


def test_stale_share_of_a_busy_agent_is_not_quadratic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runaway agent on an unapproved policy: 3,000 stale decisions in one drift window. Judging them reads
    each fact's staleness a bounded number of times (indexed), not once per fact in the window for every
    stale decision (3,000 x 3,000 / 2)."""
    import pipeline.correlator as correlator_module
    from pipeline.scoring import crossrun, rules

    calls = 0
    real = rules.stale_decision

    def counted(policy: Any, ev: TransitionDict) -> bool:
        nonlocal calls
        calls += 1
        return real(policy, ev)

    facts = [fact(i % 6, **{"run_id": f"r-busy-{i}", "agent.agent_id": "agent-drift", "policy.policy_version": "5",
                            "target.identity_id": f"u-busy-{i}", "occurred_at": T0 + i * 100})
             for i in range(3000)]
    c = _bare_correlator()
    c.baselines = lambda key: WARM
    for module in (correlator_module, crossrun):  # the correlator's reads and the rule's own
        monkeypatch.setattr(module, "stale_decision", counted)
    state = c._new_state(False)
    for ev in facts:
        state.add(ev)
    found, _ = state.judge_due(1 << 62, 1 << 40, lambda key, ev: c._judge(state, key, ev))
    assert calls <= 4 * len(facts), calls
    # once, at the crossing (no one partition had its minimum of decisions yet); not again while it stays over
    assert len([f for f in found if f.spec.code == "AG-XRN-009"]) == 1


def test_facts_written_before_schema_version_2_are_never_stale() -> None:
    old = [dict(f, policy={"policy_id": None, "policy_version": None})
           for f in decisions([(i % 6, True) for i in range(21)])]
    assert run_key(old, "agent-drift", by_target=False, baseline=WARM) == []  # type: ignore[arg-type]


def test_grant_rate_burst_over_six_partitions_is_reported_once() -> None:
    found = run_key(_burst(6), "agent-burst", by_target=False, baseline=BASELINE)
    assert [f.spec.code for f in found] == ["AG-XRN-004"]
    assert len(found[0].chain) == 20 and len(set(found[0].partitions)) == 6


@pytest.mark.parametrize(("partitions", "n", "baseline"), [
    (1, 40, BASELINE),                                            # one partition: the scorer's AG-DRF-005
    (6, 15, BASELINE),                                            # under rate_min_grants
    (6, 40, AgentBaseline("agent-burst", events=1000, grants_per_hour=60.0)),  # busy agent: normal rate
    (6, 40, None),                                                # no baseline yet
])
def test_grant_rate_benign(partitions: int, n: int, baseline: AgentBaseline | None) -> None:
    burst = _burst(partitions, n)
    if partitions == 1:  # the scorer raises AG-DRF-005 on every grant from the crossing on (marked on all here)
        burst = [said(ev, "AG-DRF-005") for ev in burst]
    assert run_key(burst, "agent-burst", by_target=False, baseline=baseline) == []


def sod(partition: int, ent: str, days_ago: float, run: str) -> TransitionDict:
    return fact(partition, **{"action": "grant_entitlement", "run_id": run, "target.identity_id": "u-fin",
                              "resource.system": "sap", "resource.resource_id": "sap-fi", "resource.entitlement": ent,
                              "resource.privilege_tier": 1, "occurred_at": T0 - int(days_ago * 86_400_000)})


@pytest.mark.parametrize(("first_part", "days_ago", "expected"), [
    (2, 30, ["AG-XRN-005"]),      # month-old half, held (holdings topic)
    (4, 30, ["AG-XRN-005"]),      # same partition but older than any scorer's context
    (2, 0.001, ["AG-XRN-005"]),   # recent half on another partition
    (4, 0.001, []),               # recent, same partition: the scorer's AG-SOD-001
])
def test_toxic_pair_against_holdings(first_part: int, days_ago: float, expected: list[str]) -> None:
    first = sod(first_part, "ap-create-vendor", days_ago, "old")
    second = said(sod(4, "ap-approve-payment", 0, "new"), "AG-SOD-001") if expected == [] else \
        sod(4, "ap-approve-payment", 0, "new")  # the scorer of partition 4 saw both halves and reported it
    found = correlate(second, CrossRunContext(POLICY, "u-fin", holdings=(first,)), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == expected
    if expected:
        assert found[0].event_ids == (first["event_id"], second["event_id"])


@pytest.mark.parametrize("pattern", ["tier_stepping", "transient", "toxic_pair", "grant_rate", "group_nesting"])
def test_a_chain_on_one_partition_its_scorer_did_not_report_is_reported(pattern: str) -> None:
    """A scorer's context is capped per key (64 events): 64 harmless events on the target between the
    steps push the first out, and that scorer never reports the chain. Its facts say so (no twin code in
    ``scorer_codes``), and the correlator, which holds every fact of the key, reports it; the same chain with
    the twin code is the scorer's (the benign look-alike tests above)."""
    if pattern == "tier_stepping":
        found = run_key([tier(4, 1, 0, "r1"), tier(4, 2, 5, "r1"), tier(4, 3, 10, "r1")], "u-step")
    elif pattern == "transient":
        found = run_key([transient(3, "grant_entitlement", 0, "ra"), transient(3, "revoke_entitlement", 90, "ra")],
                        "u-jit")
    elif pattern == "toxic_pair":
        first, second = sod(4, "ap-create-vendor", 0.001, "old"), sod(4, "ap-approve-payment", 0, "old")
        found = correlate(second, CrossRunContext(POLICY, "u-fin", holdings=(first,)), BY_TARGET_RULES)
    elif pattern == "grant_rate":  # 40 grants on one partition, more than the scorer's 64-per-key window counts
        found = run_key(_burst(1), "agent-burst", by_target=False, baseline=BASELINE)
    else:
        mine = [f for f in nesting((3, 3, 3)) if f["agent"]["agent_id"] == "agent-rogue"]
        found = run_key(mine, "agent-rogue", by_target=False)
    code = {"tier_stepping": "AG-XRN-001", "transient": "AG-XRN-002", "toxic_pair": "AG-XRN-005",
            "grant_rate": "AG-XRN-004", "group_nesting": "AG-XRN-008"}[pattern]
    assert [f.spec.code for f in found] == [code]
    assert len(set(found[0].partitions)) == 1
    if pattern in ("tier_stepping", "transient", "group_nesting"):
        assert "on one partition, whose scorer no longer held the chain" in found[0].message


@pytest.mark.parametrize(("first_names", "second_names", "revoke_names", "expected"), [
    (("sap-fi", "ap-create-vendor"), ("ap-approve-payment", "AP Payment Approver"), None, ["AG-XRN-005"]),
    (("AP-Create-Vendor", "Vendor Creator"), ("sap-fi", "ap-approve-payment"), None, ["AG-XRN-005"]),
    (("ap-create-vendor", "Vendor Creator"), ("sap-fi", "ap-approve-payment"), ("ap-create-vendor", None), []),
    (("sap-fi", "ap-create-vendor"), ("ap-approve-payment-report", "AP Payment Approver"), None, []),
    (("sap-fi", "ap-create-vendor"), ("sap-fi", "gl-post-journal"), None, []),
], ids=["new-half-by-resource-id", "held-half-by-resource-id", "held-half-revoked-by-resource-id",
        "similar-resource", "unrelated-entitlement-same-resource"])
def test_toxic_pair_against_holdings_reads_both_names_of_each_grant(
        first_names: tuple[str, str], second_names: tuple[str, str], revoke_names: tuple[str, str | None] | None,
        expected: list[str]) -> None:
    """A pair's name is an entitlement, or a resource id: a half granted as ``resource_id=ap-approve-payment``
    labelled "AP Payment Approver" (or held so) is that half, for AG-XRN-005 as for AG-SOD-001 (its entry test
    too), and a revoke naming the held half by its resource id ends it."""
    def change(partition: int, names: tuple[str, str | None], days_ago: float, run: str,
               action: str = "grant_entitlement") -> TransitionDict:
        return fact(partition, **{"action": action, "run_id": run, "target.identity_id": "u-fin",
                                  "resource.system": "sap", "resource.resource_id": names[0],
                                  "resource.entitlement": names[1], "resource.privilege_tier": 1,
                                  "occurred_at": T0 - int(days_ago * 86_400_000)})

    first, second = change(2, first_names, 30, "old"), change(4, second_names, 0, "new")
    holdings = (first,) if revoke_names is None else (first, change(2, revoke_names, 10, "rv", "revoke_entitlement"))
    if expected:  # the watermark's entry test lets the completing grant through to the rule
        assert may_find_by_target(second, POLICY.governance, copies=False, left=False)
    found = correlate(second, CrossRunContext(POLICY, "u-fin", holdings=holdings), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == expected
    if expected:
        assert found[0].event_ids == (first["event_id"], second["event_id"])


def test_toxic_pair_against_holdings_matches_names_case_insensitively() -> None:
    first = sod(2, "AP-Create-Vendor", 30, "old")
    second = sod(4, "ap-approve-payment ", 0, "new")
    found = correlate(second, CrossRunContext(POLICY, "u-fin", holdings=(first,)), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-005"]


def test_toxic_pair_not_reported_after_the_first_half_was_revoked() -> None:
    first = sod(2, "ap-create-vendor", 30, "old")
    revoke = fact(2, **{"action": "revoke_entitlement", "run_id": "rv", "target.identity_id": "u-fin",
                        "resource.system": "sap", "resource.resource_id": "sap-fi",
                        "resource.entitlement": "ap-create-vendor", "occurred_at": T0 - 10 * 86_400_000})
    second = sod(4, "ap-approve-payment", 0, "new")
    assert correlate(second, CrossRunContext(POLICY, "u-fin", holdings=(first, revoke)), BY_TARGET_RULES) == []


def _sod_change(partition: int, ent: str, minute: float, run: str, action: str = "grant_entitlement",
                system: str = "sap") -> TransitionDict:
    return fact(partition, **{"action": action, "run_id": run, "target.identity_id": "u-fin", "resource.system": system,
                              "resource.resource_id": "fi", "resource.entitlement": ent,
                              "resource.privilege_tier": 1, "occurred_at": T0 + int(minute * MIN)})


def test_toxic_pair_replays_holdings_and_history_in_event_time_order() -> None:
    """Holdings keep a target's latest change per access (a revoke), the history the window's facts (the
    grant it revokes): read one after the other, the revoke was passed over and the revoked half held."""
    grant = _sod_change(2, "ap-create-vendor", 0, "g")
    revoke = _sod_change(3, "ap-create-vendor", 10, "rv", action="revoke_entitlement")
    second = _sod_change(4, "ap-approve-payment", 20, "new")
    cx = CrossRunContext(POLICY, "u-fin", history=[grant, revoke], holdings=(revoke,))
    assert correlate(second, cx, BY_TARGET_RULES) == []  # the first half was revoked in between
    # The second half revoked and granted again while the first is still held: the pair is complete again.
    first = _sod_change(1, "ap-create-vendor", -30 * 1440, "old")
    g1 = _sod_change(3, "ap-approve-payment", -50, "g1")
    rv = _sod_change(3, "ap-approve-payment", -40, "rv2", action="revoke_entitlement")
    g2 = _sod_change(4, "ap-approve-payment", 0, "g2")
    cx = CrossRunContext(POLICY, "u-fin", history=[g1, rv], holdings=(first, rv))
    found = correlate(g2, cx, BY_TARGET_RULES)
    assert [(f.spec.code, f.event_ids) for f in found] == [("AG-XRN-005", (first["event_id"], g2["event_id"]))]


def test_a_revoke_spelled_in_another_case_ends_the_holding() -> None:
    """Access names compare as the policy's pairs do (case-insensitive, trimmed): a revoke of 'AP-Create-Vendor'
    ends a grant of 'ap-create-vendor'."""
    first = _sod_change(1, "ap-create-vendor", -30 * 1440, "old")
    revoke = _sod_change(2, "AP-Create-Vendor ", -20 * 1440, "rv", action="revoke_entitlement")
    second = _sod_change(4, "ap-approve-payment", 0, "new")
    assert correlate(second, CrossRunContext(POLICY, "u-fin", holdings=(first, revoke)), BY_TARGET_RULES) == []


def test_toxic_pair_held_per_system() -> None:
    """Revoking an entitlement of the same name on another system leaves it held on the first."""
    first = _sod_change(1, "ap-create-vendor", -30 * 1440, "old")
    other = _sod_change(2, "ap-create-vendor", -20 * 1440, "rv", action="revoke_entitlement", system="oracle")
    second = _sod_change(4, "ap-approve-payment", 0, "new")
    found = correlate(second, CrossRunContext(POLICY, "u-fin", holdings=(first, other)), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-005"]


def test_duplicate_event_id_across_partitions() -> None:
    a = fact(1, **{"target.identity_id": "u-dup", "run_id": "ra"})
    b = dict(a, source_partition=4, run_id="rb")
    redelivered = dict(a)
    assert duplicate_id_across_partitions(redelivered, [a]) is None  # same partition: a redelivery
    found = correlate(b, CrossRunContext(POLICY, "u-dup", history=[a]), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-006"] and found[0].run_ids == ("ra", "rb")


def test_a_copy_in_a_third_partition_is_a_finding_of_its_own() -> None:
    """Every copy carries the same event id, so a chain's ids alone named the second finding like the first,
    and it was dropped as already published (and the store keeps one row per id)."""
    a = fact(1, **{"target.identity_id": "u-dup", "run_id": "ra"})
    b, c = dict(a, source_partition=4, run_id="rb"), dict(a, source_partition=5, run_id="rc")
    found = [*correlate(b, CrossRunContext(POLICY, "u-dup", history=[a]), BY_TARGET_RULES),
             *correlate(c, CrossRunContext(POLICY, "u-dup", history=[a, b]), BY_TARGET_RULES)]
    assert [(f.spec.code, f.run_ids) for f in found] == [("AG-XRN-006", ("ra", "rb")), ("AG-XRN-006", ("ra", "rc"))]
    assert len({f.finding_id for f in found}) == 2
    again = correlate(c, CrossRunContext(POLICY, "u-dup", history=[a, b]), BY_TARGET_RULES)
    assert [f.finding_id for f in again] == [found[1].finding_id]  # deterministic: a replay stores it once


def test_finding_id_is_deterministic_and_depends_on_rule_key_and_chain() -> None:
    assert finding_id("AG-XRN-001", "u", ["a", "b"]) == finding_id("AG-XRN-001", "u", ["a", "b"])
    assert len({finding_id("AG-XRN-001", "u", ["a", "b"]), finding_id("AG-XRN-002", "u", ["a", "b"]),
                finding_id("AG-XRN-001", "v", ["a", "b"]), finding_id("AG-XRN-001", "u", ["b", "a"])}) == 4


def test_partition_for_is_stable() -> None:
    assert partition_for("u000001", 6) == partition_for("u000001", 6)
    assert {partition_for(f"u{i}", 6) for i in range(100)} == set(range(6))


def _account(partition: int, action: str, days_ago: float, run: str, **extra: Any) -> TransitionDict:
    return fact(partition, **{"action": action, "run_id": run, "target.identity_id": "u-left",
                              "resource.system": "entra-id", "resource.resource_id": "user-account",
                              "resource.privilege_tier": 0, "occurred_at": T0 - int(days_ago * 86_400_000),
                              **extra})


@pytest.mark.parametrize(("history", "grant_extra", "expected"), [
    ([("disable_account", 90)], {}, ["AG-XRN-007"]),
    ([("disable_account", 90), ("create_account", 30)], {}, []),        # re-hired since
    ([("create_account", 400)], {}, []),                                 # never left
    ([("disable_account", 90)], {"target.lifecycle_state": "terminated"}, []),  # the event says so: AG-LCM-001
    ([("disable_account", 90, {"decision.outcome": "denied"})], {}, []),  # the disable never happened
])
def test_grant_to_an_identity_the_log_shows_has_left(history: list[tuple[Any, ...]], grant_extra: dict[str, Any],
                                                     expected: list[str]) -> None:
    held = tuple(_account(1, h[0], h[1], f"old-{i}", **(h[2] if len(h) > 2 else {})) for i, h in enumerate(history))
    grant = fact(3, **{"action": "grant_entitlement", "run_id": "late", "target.identity_id": "u-left",
                       "resource.system": "salesforce", "resource.resource_id": "sf-profile",
                       "resource.entitlement": "sales-standard", "occurred_at": T0, **grant_extra})
    found = correlate(grant, CrossRunContext(POLICY, "u-left", holdings=held), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == expected
    if expected:
        assert "90.0 days earlier" in found[0].message and found[0].event is grant


def _on(system: str, action: str, days_ago: float, partition: int = 1, **extra: Any) -> TransitionDict:
    """An account event (or, with a grant action, a grant) of 'u-left' on ``system``, ``days_ago`` before T0."""
    account = action in ("create_account", "disable_account", "delete_account")
    return fact(partition, **{"action": action, "run_id": f"{action}-{system}-{days_ago}",
                              "target.identity_id": "u-left", "resource.system": system,
                              "resource.resource_id": "user-account" if account else "acct",
                              "resource.entitlement": None if account else "s3-read",
                              "resource.privilege_tier": 0 if account else 1,
                              "occurred_at": T0 - int(days_ago * 86_400_000), **extra})


@pytest.mark.parametrize(("history", "grant", "expected"), [
    # an application's account going is not the person leaving: a mover loses legacy-crm, keeps working on aws
    ([("legacy-crm", "disable_account", 10)], ("aws", "grant_entitlement"), []),
    ([("legacy-crm", "disable_account", 10)], ("legacy-crm", "grant_entitlement"), ["AG-XRN-007"]),  # that account
    ([("aws", "disable_account", 10), ("aws", "create_account", 5)], ("aws", "grant_entitlement"), []),  # re-created
    ([("aws", "disable_account", 10), ("legacy-crm", "create_account", 5)], ("aws", "grant_entitlement"),
     ["AG-XRN-007"]),                                                     # another system's creation re-creates nothing
    # the identity provider's account going is the person leaving, everywhere
    ([("entra-id", "disable_account", 30)], ("aws", "grant_entitlement"), ["AG-XRN-007"]),
    ([("Entra-ID", "disable_account", 30)], ("aws", "grant_entitlement"), ["AG-XRN-007"]),  # a spelling of it
    ([("entra-id", "disable_account", 30), ("sandbox", "create_account", 0.01)], ("entra-id", "assign_role"),
     ["AG-XRN-007", "AG-XRN-007"]),                          # the throwaway creation brings nobody back: both found
    ([("entra-id", "disable_account", 30), ("sandbox", "create_account", 0.01)], ("sandbox", "grant_entitlement"),
     ["AG-XRN-007", "AG-XRN-007"]),
    ([("entra-id", "disable_account", 30), ("entra-id", "create_account", 10)], ("aws", "grant_entitlement"), []),
    ([("aws", "disable_account", 30), ("entra-id", "disable_account", 30), ("entra-id", "create_account", 10)],
     ("aws", "grant_entitlement"), []),                      # re-hired: the directory brings the accounts back
    ([("entra-id", "disable_account", 30), ("okta", "disable_account", 30), ("entra-id", "create_account", 10)],
     ("aws", "grant_entitlement"), ["AG-XRN-007"]),          # but not another identity provider's account
    ([("entra-id", "disable_account", 30)], ("entra-id", "create_account"), []),  # the re-hire itself
    # deleting an account ends it no less than disabling it
    ([("entra-id", "delete_account", 30)], ("entra-id", "assign_role"), ["AG-XRN-007"]),
    ([("okta", "delete_account", 30)], ("aws", "grant_entitlement"), ["AG-XRN-007"]),
    ([("aws", "delete_account", 10)], ("aws", "grant_entitlement"), ["AG-XRN-007"]),
    ([("legacy-crm", "delete_account", 10)], ("aws", "grant_entitlement"), []),
    ([("aws", "delete_account", 10), ("aws", "create_account", 5)], ("aws", "grant_entitlement"), []),
    ([("entra-id", "delete_account", 30), ("entra-id", "create_account", 10)], ("aws", "grant_entitlement"), []),
])
def test_a_leaver_is_judged_per_system_and_by_the_identity_providers(
        history: list[tuple[str, str, float]], grant: tuple[str, str], expected: list[str]) -> None:
    """Leaving was one flag per identity while accounts are per system (review rev17_xrun #7): disabling one
    application account of an active employee made a grant on aws 10 days later AG-XRN-007, and a
    create_account on a throwaway system brought a leaver back everywhere. Now the grant's own system's account
    and the policy's identity providers decide. The account events come from holdings, the grant (and a
    creation minutes before it) from the window; every fact is judged, as the correlator does."""
    facts = [_on(system, action, days, partition=i % 3) for i, (system, action, days) in enumerate(history)]
    held = tuple(h for h in facts if h["occurred_at"] < T0 - 86_400_000)
    recent = [h for h in facts if h not in held]
    found = run_key([*recent, _on(grant[0], grant[1], 0, partition=4)], "u-left", holdings=held)
    assert [f.spec.code for f in found] == expected, [f.message for f in found]
    if expected:
        assert found[-1].event["resource"]["system"] == grant[0] and "not re-created since" in found[-1].message


@pytest.mark.parametrize(("state", "expected"), [("active", ["AG-XRN-007"]), ("on_leave", ["AG-XRN-007"]),
                                                 ("unknown", ["AG-XRN-007"]), ("terminated", []), ("pre_hire", [])])
def test_a_grant_to_a_leaver_is_found_whatever_the_event_calls_the_identity_but_gone(state: str,
                                                                                     expected: list[str]) -> None:
    """The log says the identity left (its directory account disabled 30 days ago): an agent that calls it
    ``unknown`` or ``on_leave`` is contradicted no less than one that calls it active, and AG-LCM-001 is
    silent for those states. ``terminated`` and ``pre_hire`` are AG-LCM-001's (the default blocked states)."""
    grant = _on("aws", "grant_entitlement", 0, partition=4, **{"target.lifecycle_state": state})
    found = run_key([grant], "u-left", holdings=(_on("entra-id", "disable_account", 30),))
    assert [f.spec.code for f in found] == expected


@pytest.mark.parametrize(("state", "expected"), [("pre_hire", ["AG-XRN-007"]), ("active", ["AG-XRN-007"]),
                                                 ("terminated", [])])
def test_a_leavers_application_account_created_as_pre_hire_is_found(state: str, expected: list[str]) -> None:
    """Red team, session 26: the default lifecycle lets ``pre_hire`` have ``create_account`` (AG-LCM-001 is
    silent), and AG-XRN-007 left every pre-hire grant to AG-LCM-001: an agent creating a leaver's aws account
    and calling the person pre-hire drew no finding. AG-XRN-007 now leaves a grant only when its own state blocks
    it; ``terminated`` still does, for every grant."""
    create = _on("aws", "create_account", 0, partition=4, **{"target.lifecycle_state": state})
    found = run_key([create], "u-left", holdings=(_on("entra-id", "disable_account", 30),))
    assert [f.spec.code for f in found] == expected
    if found:
        assert f"called {state}" in found[0].message


def test_the_leaver_message_names_the_account_that_went() -> None:
    ended_here = run_key([_on("aws", "grant_entitlement", 0)], "u-left", holdings=(_on("aws", "disable_account", 10),))
    assert "whose 'aws' account was disabled 10.0 days earlier" in ended_here[0].message
    left = run_key([_on("aws", "grant_entitlement", 0)], "u-left", holdings=(_on("okta", "disable_account", 30),))
    assert "whose account on identity provider 'okta' was disabled 30.0 days earlier" in left[0].message
    deleted = run_key([_on("aws", "grant_entitlement", 0)], "u-left", holdings=(_on("entra-id", "delete_account", 2),))
    assert "whose account on identity provider 'entra-id' was deleted 2.0 days earlier" in deleted[0].message


def test_a_deleted_account_lets_the_grant_through_the_correlators_entry_test() -> None:
    """The correlator skips a grant at the watermark unless the target ever had an account ended
    (``KeyedState.accounts_ended``, from the holdings read on assignment or a judged fact): a deletion counts,
    or the rule never sees the grant to a deleted identity."""
    from pipeline.keyed_state import KeyedState

    c, state = _bare_correlator(), KeyedState(by_target=True)
    state.hold(_on("entra-id", "delete_account", 30))
    assert state.accounts_ended == {"u-left"}
    found = c._judge(state, "u-left", _on("aws", "grant_entitlement", 0, partition=4))
    assert [f.spec.code for f in found] == ["AG-XRN-007"]


def test_an_identity_provider_list_of_the_policy_decides_who_left() -> None:
    """``identity_providers`` of the governance policy: a directory that is not listed is one system among
    others; an empty list leaves only each system's own account."""
    from pipeline.scoring.policy import parse_policy

    ours = parse_policy('version: "1"\nidentity_providers: [ping-directory]\n')
    held = (_on("ping-directory", "disable_account", 30), _on("entra-id", "disable_account", 30))
    grant = _on("aws", "grant_entitlement", 0)
    found = correlate(grant, CrossRunContext(ours, "u-left", holdings=held), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-007"] and "'ping-directory'" in found[0].message
    none = parse_policy('version: "1"\nidentity_providers: []\n')
    assert correlate(grant, CrossRunContext(none, "u-left", holdings=held), BY_TARGET_RULES) == []


def test_a_leaver_is_judged_the_same_from_the_compacted_holdings_as_from_the_whole_log() -> None:
    """Over random account events on identity providers and applications, the grant-to-leaver verdict (and the
    finding's id) from the whole log as history equals the one from what compaction keeps of the holdings
    topic (the latest creation, disabling and deletion per system), and from any split of the two: a rebuilt
    correlator judges as the live one did."""
    import random

    rnd = random.Random(17)
    systems = ["entra-id", "okta", "aws", "legacy-crm"]
    actions = ["create_account", "disable_account", "delete_account"]
    found = 0
    for _ in range(400):
        days = sorted(rnd.sample(range(1, 200), rnd.randrange(1, 7)), reverse=True)
        log = [_on(rnd.choice(systems), rnd.choice(actions), d, partition=rnd.randrange(3)) for d in days]
        grant = _on(rnd.choice(systems), rnd.choice(["grant_entitlement", "create_account"]), 0, partition=4)
        compacted = {holding_key(fact_from_event(h, h["source_partition"], h["source_offset"])): h for h in log}
        cut = rnd.randrange(len(log) + 1)
        split = {holding_key(fact_from_event(h, h["source_partition"], h["source_offset"])): h for h in log[:cut]}
        verdicts = {tuple(f.finding_id for f in correlate(grant, CrossRunContext(POLICY, "u-left", history=history,
                                                                                 holdings=holdings), BY_TARGET_RULES))
                    for history, holdings in ((log, ()), ((), tuple(compacted.values())),
                                              (log[cut:], tuple(split.values())))}
        assert len(verdicts) == 1, (log, grant, verdicts)
        found += bool(next(iter(verdicts)))
    assert 50 < found < 350, found  # both verdicts were exercised


@pytest.mark.parametrize("rebuilt", [False, True])
def test_a_clean_up_revoke_of_the_account_keeps_the_record_that_the_identity_left(rebuilt: bool) -> None:
    """disable_account and a later revoke of ``user-account`` on the same system shared one holdings key, so
    the revoke replaced the disable (in memory and on the compacted topic) and a grant 89 days later was no
    AG-XRN-007. Live and after a rebuild from the compacted topic, the disable is still held."""
    from pipeline.keyed_state import KeyedState

    disable = _account(1, "disable_account", 90, "leaver-1", **{"trigger.kind": "leaver"})
    cleanup = _account(2, "revoke_entitlement", 89, "leaver-2", **{"target.lifecycle_state": "terminated"})
    grant = fact(3, **{"action": "grant_entitlement", "run_id": "late", "target.identity_id": "u-left",
                       "resource.system": "aws", "resource.resource_id": "acct", "resource.entitlement": "s3-read",
                       "occurred_at": T0})
    state = KeyedState(by_target=True)
    if rebuilt:  # what compaction leaves of the holdings topic: the latest record per key, read on assignment
        compacted = {holding_key(fact_from_event(h, h["source_partition"], h["source_offset"])): h
                     for h in (disable, cleanup)}
        for h in compacted.values():
            state.hold(h)
    else:
        state.hold(disable)
        state.apply("u-left", cleanup, 1 << 40)
    assert [h["action"] for h in state.held("u-left")] == ["disable_account", "revoke_entitlement"]
    found = correlate(grant, CrossRunContext(POLICY, "u-left", holdings=state.held("u-left")), BY_TARGET_RULES)
    assert [f.spec.code for f in found] == ["AG-XRN-007"]
    created = _account(2, "create_account", 30, "rehire")  # re-hired on that system: its own key too
    state.hold(created)
    assert [h["action"] for h in state.held("u-left")] == ["disable_account", "revoke_entitlement", "create_account"]
    assert correlate(grant, CrossRunContext(POLICY, "u-left", holdings=state.held("u-left")), BY_TARGET_RULES) == []


def _judge_with_rules(key: str, ev: TransitionDict, state: Any) -> list[CrossRunFinding]:
    cx = CrossRunContext(POLICY, key, history=state.before(key, ev), holdings=state.held(key))
    return correlate(ev, cx, BY_TARGET_RULES)


@pytest.mark.parametrize("arrival", ["ordered", "reversed", "revoke_judged_before_grant_arrives"])
def test_correlator_state_judges_in_event_time_and_rejudges_after_a_late_fact(arrival: str) -> None:
    """KeyedState.judge_due, the correlator's loop body: the same single finding in every arrival order,
    including a revoke already judged (past the grace) before its grant arrived."""
    from pipeline.keyed_state import KeyedState

    grant = transient(0, "grant_entitlement", 0, "ra")
    revoke = transient(3, "revoke_entitlement", 90, "rb")
    state = KeyedState(by_target=True)

    def judge(key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        return _judge_with_rules(key, ev, state)

    found: list[CrossRunFinding] = []
    late = 0
    if arrival == "revoke_judged_before_grant_arrives":
        state.add(revoke)
        found += state.judge_due(revoke["occurred_at"], 1 << 40, judge)[0]
        assert found == []  # alone, the revoke completes nothing
        state.add(grant)
        more, late = state.judge_due(revoke["occurred_at"], 1 << 40, judge)
        found += more
    else:
        for ev in ([grant, revoke] if arrival == "ordered" else [revoke, grant]):
            state.add(ev)  # both inside the grace: held until the watermark passes them
        found, late = state.judge_due(revoke["occurred_at"], 1 << 40, judge)
    assert [f.spec.code for f in found] == ["AG-XRN-002"] and found[0].event is revoke
    assert late == (1 if arrival == "revoke_judged_before_grant_arrives" else 0)
    assert state.judge_due(revoke["occurred_at"] + 1, 1 << 40, judge)[0] == []  # nothing published twice


def _page_with_rules(key: str, ev: TransitionDict, state: Any) -> list[CrossRunFinding]:
    cx = CrossRunContext(POLICY, key, history=state.arrived_before(key, ev, 3_600_000))
    return correlate(ev, cx, PAGING_BY_TARGET)


@pytest.mark.parametrize(("chain", "order"), [
    ("transient", "ordered"), ("transient", "reversed"),
    ("tier", "ordered"), ("tier", "reversed"), ("tier", "middle_last"),
])
def test_early_page_fires_on_arrival_in_any_order_and_matches_the_watermark_finding(chain: str, order: str) -> None:
    """KeyedState.judge_early: the chain pages as soon as its last fact *arrives* (no watermark), whichever
    fact that is; a fact older than ones already judged re-judges them. The finding published later at
    the watermark has the same id, and neither is emitted twice."""
    from pipeline.keyed_state import KeyedState

    if chain == "transient":
        facts = [transient(0, "grant_entitlement", 0, "ra"), transient(3, "revoke_entitlement", 90, "rb")]
    else:
        facts = [tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), tier(2, 3, 10, "r3")]
    arrival = {"ordered": facts, "reversed": facts[::-1], "middle_last": [*facts[:1], *facts[2:], *facts[1:2]]}[order]
    state = KeyedState(by_target=True)
    pages: list[list[CrossRunFinding]] = []
    for ev in arrival:
        assert state.add(ev)
        pages.append(state.judge_early(ev, 3_600_000, 1 << 40, lambda k, e: _page_with_rules(k, e, state)))
    assert all(p == [] for p in pages[:-1])  # nothing before the chain is whole
    code = "AG-XRN-002" if chain == "transient" else "AG-XRN-001"
    assert [f.spec.code for f in pages[-1]] == [code] and pages[-1][0].event is facts[-1]
    assert state.pending  # the watermark has released nothing yet: the page did not wait for it
    found, _ = state.judge_due(facts[-1]["occurred_at"], 1 << 40, lambda k, e: _judge_with_rules(k, e, state))
    assert [f.finding_id for f in found] == [pages[-1][0].finding_id]  # same chain, same id
    again = state.add(TransitionDict(**{**facts[0], "source_offset": 99}))
    assert again and state.judge_early(facts[0], 3_600_000, 1 << 40,
                                       lambda k, e: _page_with_rules(k, e, state)) == []  # paged once


def test_early_page_forgets_arrived_facts_past_the_keep_window() -> None:
    from pipeline.keyed_state import KeyedState

    state = KeyedState(by_target=True)
    old, new = transient(0, "grant_entitlement", 0, "ra"), transient(3, "revoke_entitlement", 7200, "rb")
    for ev in (old, new):
        state.add(ev)
        state.judge_early(ev, 3_600_000, 3_600_000, lambda k, e: _page_with_rules(k, e, state))
    assert [e["event_id"] for e in state.arrived_before("u-jit", dict(new, occurred_at=new["occurred_at"] + 1),
                                                        1 << 40)] == [new["event_id"]]


@pytest.mark.parametrize("quiet", [False, True])
def test_a_backlog_is_judged_in_event_time_order_busy_or_quiet(quiet: bool) -> None:
    """KeyedState.watermark: a correlator catching up a backlog (the clock a day past its facts) judges in
    event-time order, while facts keep arriving and across a pause (a quiet partition: its watermark moves
    on from where the facts left it, at the clock's pace, not to the clock). Facts of two sources 3 s apart
    (inside the grace), arriving interleaved; with the clock's watermark every fact after a pause would be
    late (each re-judges the key's later facts: quadratic on a busy key). A quiet partition still closes:
    a grace period after its last fact arrived, everything is released."""
    from pipeline.keyed_state import KeyedState

    state = KeyedState(by_target=True)
    grace_ms, late, clock = 5_000, 0, 100.0
    ahead = [transient(0, "grant_entitlement", 3 + i, f"ra{i}") for i in range(40)]
    behind = [transient(1, "grant_entitlement", i, f"rb{i}") for i in range(40)]
    for a, b in zip(ahead, behind, strict=True):  # the lagging source's fact arrives after the leading one's
        for ev in (a, b):
            clock += 1.5 if quiet else 0.01  # a pause before every fact
            state.add(ev, clock)
            late += state.judge_due(state.watermark(grace_ms, quiet, clock + 1.0), 1 << 40, lambda k, e: [])[1]
    assert late == 0
    assert state.watermark(grace_ms, False, clock) == behind[-1]["occurred_at"] - grace_ms  # the slower
    assert state.watermark(grace_ms, True, clock + 2.0) == behind[-1]["occurred_at"] - grace_ms + 2_000
    state.judge_due(state.watermark(grace_ms, True, clock + 8.0), 1 << 40, lambda k, e: [])
    assert not state.pending  # quiet for longer than the grace (and the lag): all judged


def test_an_idle_partition_of_backdated_facts_is_judged_by_the_wall_clock() -> None:
    """KeyedState.watermark: a partition whose facts were stamped minutes before they were sent (a backdated
    chain, as the demo plants) and then gets no fact: quiet, its watermark moves on from the facts at the
    clock's pace (a grace period of 5 minutes would pass before the last fact is judged); idle
    (SOURCE_IDLE_SECONDS without a fact), the wall clock releases it. The demo missed AG-XRN-008 with the
    first rule alone."""
    from pipeline.keyed_state import SOURCE_IDLE_SECONDS, KeyedState

    state = KeyedState(by_target=True)
    grace_ms, wall_ms, clock = 300_000, T0 + 3_600_000, 100.0
    for i, minutes_ago in enumerate((28, 18, 7)):
        state.add(transient(i % 2, "assign_role", 3600 - minutes_ago * 60, f"r{i}"), clock)
    assert state.arrived_at == clock  # add notes when a live fact arrived
    last = T0 + (3600 - 7 * 60) * 1000
    assert state.watermark(grace_ms, True, clock + 5.0, wall_ms) < last  # quiet: not yet
    assert state.watermark(grace_ms, True, clock + SOURCE_IDLE_SECONDS, wall_ms) == wall_ms - grace_ms >= last
    assert state.watermark(grace_ms, True, clock + SOURCE_IDLE_SECONDS) < last  # without a wall clock: the facts'


def test_created_before_tells_when_an_agent_history_can_hold_a_group_nesting_chain() -> None:
    """KeyedState.created_before: the correlator hands group nesting an agent's history only when a
    create_group of the agent lies in the window before the fact (else the scan finds nothing anyway)."""
    from pipeline.keyed_state import KeyedState

    state = KeyedState(by_target=False)
    grant = fact(0, **{"action": "assign_role", "occurred_at": T0 + 10 * MIN})
    state.add(grant)
    assert not state.created_before(grant["agent"]["agent_id"], grant, 3_600_000)
    made = fact(1, **{"action": "create_group", "occurred_at": T0 + 5 * MIN,
                      "target.identity_id": grant["target"]["identity_id"]})
    state.add(made)
    key = made["agent"]["agent_id"]
    assert state.created_before(key, grant, 3_600_000)
    other = fact(2, **{"action": "assign_role", "occurred_at": T0 + 10 * MIN, "target.identity_id": "u-else"})
    assert not state.created_before(key, other, 3_600_000)  # a group it does not touch
    assert not state.created_before(key, grant, 4 * MIN)  # outside the window
    assert not state.created_before(key, made, 3_600_000)  # not before itself


def test_a_later_copy_from_another_partition_raises_only_the_duplicate_finding() -> None:
    """A copy of r2's event (its event_id, rewritten to tier 3, under another Kafka key) is no new grant: it
    completes no tier-stepping chain. The look-alike under its own event_id does."""
    r1, r2 = tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2")
    copy = dict(tier(2, 3, 10, "r3"), event_id=r2["event_id"])
    assert [f.spec.code for f in run_key([r1, r2, copy], "u-step")] == ["AG-XRN-006"]
    assert [f.spec.code for f in run_key([r1, r2, tier(2, 3, 10, "r3")], "u-step")] == ["AG-XRN-001"]


def test_the_correlator_state_keeps_a_later_copy_out_of_history_and_holdings() -> None:
    from pipeline.keyed_state import KeyedState

    state = KeyedState(by_target=True)
    r2 = tier(1, 2, 5, "r2")
    copy = dict(tier(2, 3, 10, "r3"), event_id=r2["event_id"])
    for ev in (r2, copy):
        state.apply("u-step", ev, 86_400_000)
    assert [h["run_id"] for _, h in state.history["u-step"]] == ["r2"]
    assert [h["run_id"] for h in state.ids[r2["event_id"]]] == ["r2"]
    assert [h["run_id"] for h in state.held("u-step")] == ["r2"]


def _count_calls(obj: Any, name: str) -> list[int]:
    """Replace ``obj.<name>`` by a wrapper counting its calls; the count is the returned list's item."""
    calls = [0]
    real = getattr(obj, name)

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    setattr(obj, name, counted)
    return calls


def _bare_correlator() -> Any:
    """The judging half of a Correlator: no consumer, no producer, no delegation edges."""
    from pipeline.correlator import Correlator

    c: Any = Correlator.__new__(Correlator)
    c._sources = 0
    c.policy, c.scorer_window_ms, c.grace_ms = POLICY, 3_600_000, 300_000
    c.limits = Limits()
    c.graph = type("NoEdges", (), {"into": staticmethod(lambda agent: [])})()
    return c


@pytest.mark.parametrize(("action", "outcome"), [("grant_entitlement", "granted"), ("revoke_entitlement", "granted"),
                                                 ("grant_entitlement", "denied")])
def test_the_stale_share_is_reported_whichever_decision_crosses_it(action: str, outcome: str) -> None:
    """AG-XRN-009 counts every decision of the agent, so the crossing one may be a revoke or a denied grant:
    the correlator judged only executed grants by agent, and later stale grants then saw the window already
    over the threshold (once per crossing): never reported."""
    import functools

    from pipeline.keyed_state import KeyedState

    c = _bare_correlator()
    c.baselines = lambda agent: WARM
    state = KeyedState(by_target=False, stale_of=c._stale_of())
    facts = decisions([(i % 3, i in (3, 7, 11)) for i in range(15)])  # 3 of 12 stale at the 12th: 25% > 20%
    facts[11] = dict(facts[11], action=action, decision=dict(facts[11]["decision"], outcome=outcome))
    for ev in facts:
        state.add(ev)
    found, _ = state.judge_due(1 << 62, 7200 * 1000, functools.partial(c._judge, state))
    assert [(f.spec.code, f.event["event_id"]) for f in found] == [("AG-XRN-009", facts[11]["event_id"])]


@pytest.mark.parametrize("arrival", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
def test_group_nesting_pages_once_on_arrival_in_any_order(arrival: tuple[int, int, int]) -> None:
    from pipeline.keyed_state import KeyedState

    c, state = _bare_correlator(), KeyedState(by_target=False)
    facts = nesting((0, 2, 4))
    pages = []
    for i in arrival:
        assert state.add(facts[i])
        pages += c._page_early(state, facts[i])
    assert [f.spec.code for f in pages] == ["AG-XRN-008"] and pages[0].event is facts[2]


def test_a_busy_agent_that_once_created_a_group_is_not_rejudged_per_fact() -> None:
    """Early paging re-judges a key's later facts only for a step of a possible group-nesting chain: 300
    grants arriving newest first (each older than all before it) cost 300 judgements, not 300 x 300 / 2."""
    from pipeline.keyed_state import KeyedState

    c, state = _bare_correlator(), KeyedState(by_target=False)
    calls = _count_calls(c, "_paging")
    create = nesting((0, 2, 4))[0]  # the agent made a group once...
    grants = [fact(i % 6, **{"run_id": f"r-busy-{i}", "agent.agent_id": "agent-rogue", "step": 1,
                             "target.identity_id": f"u-busy-{i}", "occurred_at": T0 + MIN + i * 1000})
              for i in range(300)]  # ...and then granted ordinary access to 300 others
    for ev in [create, *reversed(grants)]:
        state.add(ev)
        c._page_early(state, ev)
    assert calls[0] <= 301 + 300, calls


def _workload_facts(events: int) -> list[TransitionDict]:
    """The demo workload's access facts (planted and cross-run cases included), routed like the scorer."""
    from pipeline.facts import FACT_ACTIONS
    from pipeline.publisher import TransitionPublisher
    from pipeline.settings import Settings
    from pipeline.workload import Workload

    pub = TransitionPublisher(Settings.load(kafka_bootstrap="127.0.0.1:1"))  # complete() only
    out, offsets = [], [0] * 6
    for op in Workload(seed=7, bad_inputs=False, cross_run=True).ops(events):
        record = pub.complete(op.payload)
        if record["action"] in FACT_ACTIONS:
            p = partition_for(record["run_id"], 6)
            offsets[p] += 1
            out.append(as_event(fact_from_event(record, p, offsets[p])))
    return out


def test_the_paging_entry_tests_skip_only_facts_that_cannot_complete_a_chain(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    """``may_page`` lets the correlator skip most arriving facts; the pages are the same as without it, over the
    demo workload with its planted chains (by target and by agent), and a fact it turns away gets nothing from
    the paging rules whatever its history."""
    from pipeline import correlator as correlator_module
    from pipeline.keyed_state import KeyedState
    from pipeline.scoring.crossrun import PAGING_BY_AGENT, entry_test, may_page

    facts = _workload_facts(2_000)

    def pages(gate: bool) -> tuple[list[str], int]:
        monkeypatch.setattr(correlator_module, "may_page", may_page if gate else lambda *_: True)
        # and the entry tests judge_early asks (Correlator._early_terms): ungated, every fact reaches the rules
        monkeypatch.setattr(correlator_module, "entry_test", entry_test if gate else lambda rules: lambda *_: True)
        c, found, turned_away = _bare_correlator(), [], 0
        for by_target in (True, False):
            state = KeyedState(by_target)
            for ev in facts:
                state.add(ev)
                found += [f.finding_id for f in c._page_early(state, ev)]
                rules = PAGING_BY_TARGET if by_target else PAGING_BY_AGENT
                turned_away += not may_page(ev, POLICY.policy, rules)
        return found, turned_away

    gated, turned_away = pages(True)
    ungated, _ = pages(False)
    assert gated == ungated and len(gated) >= 3, gated
    assert turned_away > len(facts), turned_away  # most facts of both keyings are turned away

    # A completing step made to fail its rule's entry test is found by no paging rule.
    denied = {"decision.outcome": "denied"}
    chains = [([tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2")], tier(2, 3, 10, "r3"), tier(2, 3, 10, "r3", **HUMAN)),
              ([transient(0, "grant_entitlement", 0, "g")], transient(1, "revoke_entitlement", 60, "r"),
               transient(1, "revoke_entitlement", 60, "r", **denied)),
              (nesting((0, 2, 4))[:2], nesting((0, 2, 4))[2], nesting((0, 2, 4), grant=HUMAN)[2])]
    for history, last, spoiled in chains:
        by_target = last["action"] != "assign_role" or last["target"]["identity_id"] != "grp-tmp"
        key = last["target"]["identity_id"] if by_target else last["agent"]["agent_id"]
        rules = PAGING_BY_TARGET if by_target else PAGING_BY_AGENT
        cx = CrossRunContext(POLICY, key, history=history)
        assert correlate(last, cx, rules) and may_page(last, POLICY.policy, rules)
        assert not may_page(spoiled, POLICY.policy, rules) and correlate(spoiled, cx, rules) == []


def test_a_rule_that_raises_skips_the_fact_not_the_correlator(caplog: pytest.LogCaptureFixture) -> None:
    """A rule bug on one fact must not end the correlator (restarted, it would replay the fact and raise
    again): the judgement is skipped, logged with the traceback, and counted, on arrival and at the
    watermark alike."""
    import functools

    from prometheus_client import CollectorRegistry

    from pipeline.metrics import Metrics

    c = _bare_correlator()
    c.metrics = Metrics(CollectorRegistry())

    def broken(state: Any, key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        raise KeyError("a rule bug")

    c._paging = c._judge = broken
    state = c._new_state(True)
    for ev in (tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), tier(2, 3, 10, "r3")):
        assert state.add(ev)
        assert c._page_early(state, ev) == []
    found, _ = state.judge_due(1 << 62, 1 << 40, functools.partial(c._guarded, c._judge, state))
    assert found == []
    # On arrival only the tier-3 grant passes the paging rules' entry test; at the watermark all three are judged.
    assert c.metrics.correlator_rule_errors._value.get() == 4
    assert caplog.text.count("cross-run rule failed") == 4 and "a rule bug" in caplog.text


def test_a_copy_let_through_after_seen_was_pruned_neither_crashes_nor_publishes_twice() -> None:
    """``seen`` is bounded (prune_seen); a copy of a fact arriving after it was cleared has the very order of the
    original. The pending heap and the per-key lists must still order them (no dict is ever compared), and the
    chain is published once."""
    from pipeline.keyed_state import KeyedState

    grant, revoke = transient(0, "grant_entitlement", 0, "ra"), transient(3, "revoke_entitlement", 90, "rb")
    state = KeyedState(by_target=True)

    def judge(key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        return _judge_with_rules(key, ev, state)

    for ev in (grant, revoke):
        assert state.add(ev)
    state.prune_seen(limit=0)
    # same order as the originals, other content
    for ev in (TransitionDict(**{**grant, "step": 7}), TransitionDict(**{**revoke, "step": 8})):
        assert state.add(ev)
        state.judge_early(ev, 3_600_000, 1 << 40, lambda k, e: _page_with_rules(k, e, state))
    found, _ = state.judge_due(revoke["occurred_at"], 1 << 40, judge)
    assert [f.spec.code for f in found] == ["AG-XRN-002"]


@pytest.mark.parametrize("seed", range(5))
def test_keyed_state_windows_equal_a_scan(seed: int) -> None:
    """The bisect probes of KeyedState (``before``, ``arrived_before``, ``after``, ``grants_before``,
    ``created_before``) against a plain scan, over facts with clashing times, shuffled arrival and copies of
    one event id on several partitions."""
    import random

    from pipeline.keyed_state import KeyedState, order

    rnd = random.Random(seed)
    facts = []
    for i in range(120):
        action = rnd.choice(["grant_entitlement", "revoke_entitlement", "assign_role", "create_group",
                             "add_group_member"])
        ev = fact(rnd.randrange(3), event_id=f"e{rnd.randrange(60)}", run_id=f"r{i}", step=0,
                  occurred_at=T0 + rnd.randrange(40) * 60_000, source_offset=i, action=action,
                  target={"identity_id": rnd.choice(["g1", "g2"]), "identity_type": "group",
                          "lifecycle_state": "active"},
                  resource={"system": "okta", "resource_id": rnd.choice(["g1", "g2", "role/x"]),
                            "entitlement": None, "privilege_tier": rnd.randrange(4)})
        facts.append(ev)
    rnd.shuffle(facts)
    state = KeyedState(by_target=False)
    for ev in facts:
        state.add(ev)
    released = state.release(1 << 62)
    for ev in released:
        state.apply(state.key_of(ev), ev, 1 << 40)
    key = facts[0]["agent"]["agent_id"]
    for ev in facts:
        o, t = order(ev), ev["occurred_at"]
        for window in (0, 5 * 60_000, 17 * 60_000, 1 << 40):
            lo = t - window
            want = [h for h in released if lo <= h["occurred_at"] and order(h) < o]
            assert list(state.before(key, ev, window)) == want
            assert list(state.arrived_before(key, ev, window)) == want
            assert list(state.grants_before(key, ev, window)) == [h for h in want if h["action"] in
                                                                   ("grant_entitlement", "assign_role",
                                                                    "add_group_member")
                                                                   and h["decision"]["outcome"] == "granted"]
            groups = {ev["target"]["identity_id"]} | ({ev["resource"]["resource_id"]}
                                                      if ev["action"] == "add_group_member" else set())
            assert state.created_before(key, ev, window) == any(
                h["action"] == "create_group" and {h["target"]["identity_id"], h["resource"]["resource_id"]} & groups
                for h in want)
        assert list(state.after(key, ev)) == [h for h in released if order(h) > o]


def _stale_of() -> Any:
    import functools

    from pipeline.scoring.rules import stale_decision

    return functools.partial(stale_decision, POLICY.governance)


def _judge_late(c: Any, state: Any, arrival: list[TransitionDict]) -> tuple[list[CrossRunFinding], int]:
    """Each fact judged as it arrives (watermark at its own time), the way a correlator past the grace does."""
    import functools

    found: list[CrossRunFinding] = []
    late = 0
    for ev in arrival:
        state.add(ev)
        out, n = state.judge_due(ev["occurred_at"], 1 << 40, functools.partial(c._guarded, c._judge, state),
                                 rejudge=functools.partial(c._rejudge, state))
        found, late = found + out, late + n
    return found, late


@pytest.mark.parametrize("arrival", [(0, 1, 2), (1, 2, 0), (2, 1, 0), (0, 2, 1)])
def test_a_group_nesting_step_arriving_past_the_grace_still_completes_its_chain(arrival: tuple[int, ...]) -> None:
    """Correlator._rejudge by agent: a late step of a nesting chain has the agent's later facts judged again
    by group nesting, so the chain is found whichever step came last."""
    from pipeline.keyed_state import KeyedState

    c, state = _bare_correlator(), KeyedState(by_target=False, stale_of=_stale_of())
    c.baselines = lambda key: None
    facts = nesting((0, 2, 4))
    found, late = _judge_late(c, state, [facts[i] for i in arrival])
    assert [f.spec.code for f in found] == ["AG-XRN-008"] and found[0].event is facts[2]
    assert late == sum(1 for i, a in enumerate(arrival) if any(b > a for b in arrival[:i]))


def test_a_late_grant_of_a_busy_agent_does_not_rejudge_its_window() -> None:
    """A backlog read unevenly (or an agent backdating its events) makes late facts on busy agents: each is
    judged, but the agent's later facts are judged again only for a group-nesting step. 400 grants arriving
    newest first cost 400 judgements, not 400 x 400 / 2."""
    from pipeline.keyed_state import KeyedState

    c, state = _bare_correlator(), KeyedState(by_target=False, stale_of=_stale_of())
    c.baselines = lambda key: AgentBaseline("agent-rogue", events=1000, grants_per_hour=1.0)
    calls = _count_calls(c, "_judge")
    grants = [fact(i % 6, **{"run_id": f"r-busy-{i}", "agent.agent_id": "agent-rogue", "step": 1,
                             "target.identity_id": f"u-busy-{i}", "occurred_at": T0 + i * 1000})
              for i in range(400)]
    found, late = _judge_late(c, state, grants[::-1])
    assert late == 399 and calls == [400]
    # The documented limit (docs/guarantees.md): a counting rule counts a late fact from then on, it does not
    # report a crossing the fact moved earlier. Every grant here came late, so the burst is not reported.
    assert found == []


def test_late_rejudging_of_one_key_is_bounded() -> None:
    """By target every later fact is judged again (the holdings rules reach back any age), up to
    REJUDGE_LIMIT per late fact; the cut is counted."""
    from pipeline.keyed_state import REJUDGE_LIMIT, KeyedState

    state = KeyedState(by_target=True)
    calls = 0

    def judge(key: str, ev: TransitionDict) -> list[CrossRunFinding]:
        nonlocal calls
        calls += 1
        return []

    later = [fact(i % 6, **{"run_id": f"r-svc-{i}", "target.identity_id": "svc-busy", "step": 1,
                            "occurred_at": T0 + (i + 1) * 1000}) for i in range(REJUDGE_LIMIT + 200)]
    for ev in later:
        state.add(ev)
    state.judge_due(1 << 62, 1 << 40, judge)
    calls = 0
    early = fact(0, **{"run_id": "r-svc-late", "target.identity_id": "svc-busy", "step": 1, "occurred_at": T0})
    state.add(early)
    _, late = state.judge_due(1 << 62, 1 << 40, judge)
    assert late == 1 and calls == 1 + REJUDGE_LIMIT and state.rejudge_cut == 1


@pytest.mark.parametrize("lag_minutes", [3, 4])
def test_a_source_minutes_behind_holds_the_watermark_so_its_facts_are_not_late(lag_minutes: int) -> None:
    """KeyedState.watermark per source partition: a backlog whose scorers read their partitions unevenly (one
    source minutes of event time behind the other, far past the grace) is still judged in event-time order
    while both sources are heard from; the chain split over them is found once, with no late fact."""
    from pipeline.keyed_state import KeyedState

    state = KeyedState(by_target=True)
    grace_ms, late, found = 5_000, 0, []
    grant = transient(1, "grant_entitlement", 0, "rb-grant")
    revoke = transient(0, "revoke_entitlement", 90, "ra-revoke")
    ahead = [revoke, *(transient(0, "assign_role", lag_minutes * 60 + i, f"ra{i}",
                                 **{"resource.resource_id": f"role/R{i}", "resource.entitlement": None,
                                    "resource.privilege_tier": 1}) for i in range(30))]
    behind = [grant, *(transient(1, "assign_role", 60 + i, f"rb{i}",
                                 **{"resource.resource_id": f"role/B{i}", "resource.entitlement": None,
                                    "resource.privilege_tier": 1}) for i in range(30))]
    clock = 100.0
    for a, b in zip(ahead, behind, strict=True):  # the lagging source's fact arrives after the leading one's
        for ev in (a, b):
            clock += 0.01
            state.add(ev, clock)
            out, n = state.judge_due(state.watermark(grace_ms, False, clock), 1 << 40,
                                     lambda k, e: _judge_with_rules(k, e, state))
            found, late = found + out, late + n
    out, n = state.judge_due(state.watermark(grace_ms, True, clock + lag_minutes * 60 + 10), 1 << 40,  # then quiet
                             lambda k, e: _judge_with_rules(k, e, state))
    assert late + n == 0
    assert [f.spec.code for f in found + out] == ["AG-XRN-002"]


def test_an_idle_source_does_not_hold_the_watermark_and_a_lagging_one_only_up_to_the_cap() -> None:
    from pipeline.keyed_state import SOURCE_IDLE_SECONDS, SOURCE_LAG_CAP_MS, KeyedState

    state = KeyedState(by_target=True)
    state.add(transient(1, "assign_role", 0, "rb"), 10.0)
    state.add(transient(0, "assign_role", 240, "ra"), 10.0)
    assert state.watermark(0, False, 10.0) == T0  # source 1 is heard from: it holds the watermark
    assert state.watermark(0, False, 10.0 + SOURCE_IDLE_SECONDS) == T0 + 240_000  # idle: it does not
    state.add(transient(0, "assign_role", 3600, "ra2"), 11.0)
    assert state.watermark(0, False, 11.0) == T0 + 3_600_000 - SOURCE_LAG_CAP_MS  # an hour behind: capped
    assert state.watermark(0, True, 16.0) == T0 + 3_600_000 - SOURCE_LAG_CAP_MS + 5_000  # quiet 5 s: on by 5 s


def test_a_source_not_heard_from_yet_holds_the_watermark_while_the_state_warms_up() -> None:
    """KeyedState.expected_sources: on a fresh state, facts of the sources heard first must not be released
    before the others are heard (their facts would all be late: seen in the correlation benchmark, where one
    scorer's sources arrived a batch after the other's), for at most SOURCE_IDLE_SECONDS."""
    from pipeline.keyed_state import SOURCE_IDLE_SECONDS, KeyedState

    state = KeyedState(by_target=True, expected_sources=2)
    state.add(transient(0, "assign_role", 240, "ra"), 10.0)
    assert state.watermark(0, False, 11.0) == state.floor(0) < T0  # source 1 not heard from: the floor
    assert state.watermark(0, False, 10.0 + SOURCE_IDLE_SECONDS) == T0 + 240_000  # waited long enough
    state.add(transient(1, "assign_role", 0, "rb"), 11.0)
    assert state.watermark(0, False, 11.0) == T0  # both heard: the slower one holds it
    rebuilt = KeyedState(by_target=True, expected_sources=2)  # after a rebuild: both sources replayed...
    rebuilt.add(transient(0, "assign_role", 200, "ra0"))
    rebuilt.add(transient(1, "assign_role", 100, "rb0"))
    rebuilt.add(transient(0, "assign_role", 240, "ra"), 10.0)  # ...one heard live: warming up still
    assert rebuilt.watermark(0, False, 11.0) == rebuilt.floor(0)
    rebuilt.add(transient(1, "assign_role", 120, "rb"), 12.0)
    assert rebuilt.watermark(0, False, 12.0) == T0 + 120_000


@pytest.mark.parametrize("case", ["lagging_source", "warming_up", "idle_source"])
def test_a_rebuild_applies_unjudged_only_facts_the_watermark_had_released(case: str) -> None:
    """Correlator.rebuild replays a partition up to its committed offset and applies, without judging, the
    facts up to KeyedState.floor. Whatever the watermark was at the commit (a lagging source, a state still
    warming up, an idle source), those facts had all been released and judged; a fact past the floor is
    judged again (its finding id is the same, stored once), never skipped."""
    from pipeline.keyed_state import KeyedState

    state = KeyedState(by_target=True, expected_sources=3 if case == "warming_up" else 2)
    added, judged = [], set()
    clock = 100.0
    for i in range(60):
        if case == "idle_source" and i % 2 and i > 30:
            continue  # source 1 stops: idle after SOURCE_IDLE_SECONDS, the watermark moves on without it
        ev = transient(i % 2, "assign_role", i * 10 + (0 if i % 2 else 240), f"r{i}",
                       **{"resource.resource_id": f"role/R{i}", "resource.entitlement": None,
                          "resource.privilege_tier": 1})
        clock += 1.0
        state.add(ev, clock)
        added.append(ev)
        judged |= {e["event_id"] for e in state.release(state.watermark(5_000, False, clock))}
    assert judged  # the watermark moved
    replayed = KeyedState(by_target=True, expected_sources=state.expected_sources)
    for ev in added:
        replayed.add(ev)  # a replay: no clock
    applied = {ev["event_id"] for ev in replayed.release(replayed.floor(5_000))}
    assert applied <= judged


@pytest.mark.parametrize("by_target", [True, False])
def test_quiet_keys_are_forgotten_and_the_findings_stay_the_same(by_target: bool) -> None:
    """``KeyedState.expire``: over a day of the demo workload (its 30 minutes, planted and cross-run chains
    included, eight times, three hours apart, each time with new identities, agents and runs), a state that
    forgets keys quiet for the retained window finds exactly what one that keeps every key finds, holds far
    fewer keys, and its event-id index names only facts it still holds."""
    import copy
    import functools

    from pipeline.keyed_state import KeyedState

    once, retain = _workload_facts(6_000), 7_200_000
    facts = []
    for k in range(8):
        for ev in once:
            e = copy.deepcopy(ev)
            e["occurred_at"] += k * 3 * 3_600_000
            e["source_offset"] += k * 1_000_000
            for where, field in ((e, "event_id"), (e, "run_id"), (e["target"], "identity_id"),
                                 (e["agent"], "agent_id")):
                where[field] = f"{where[field]}~{k}"
            facts.append(e)
    c = _bare_correlator()
    quiet_agent = AgentBaseline("any", events=1_000, grants_per_hour=1.0)  # the rate rules speak too
    c.baselines = lambda key: quiet_agent

    def run(expire: bool) -> tuple[list[str], int, KeyedState]:
        state = KeyedState(by_target, stale_of=None if by_target else c._stale_of())
        found: list[str] = []
        peak = 0
        for i in range(0, len(facts), 100):
            for ev in facts[i:i + 100]:
                state.add(ev)
            out, _ = state.judge_due(state.max_seen_ms - c.grace_ms, retain,
                                     functools.partial(c._guarded, c._judge, state),
                                     rejudge=functools.partial(c._rejudge, state))
            found += [f.finding_id for f in out]
            if expire:
                state.expire(retain, c._early_keep_ms())
            peak = max(peak, len(state.history), len(state.arrived))
        out, _ = state.judge_due(1 << 62, retain, functools.partial(c._guarded, c._judge, state))  # the clock's flush
        return found + [f.finding_id for f in out], peak, state

    kept, peak_kept, _ = run(False)
    forgot, peak_forgot, state = run(True)
    print("findings", len(kept), "peaks", peak_kept, peak_forgot)
    assert forgot == kept and kept, (len(forgot), len(kept))
    assert peak_forgot * 3 < peak_kept, (peak_forgot, peak_kept)
    held = {h["event_id"] for hist in state.history.values() for _, h in hist}
    assert set(state.ids) == held
    assert all(state.history.values()) and all(state.arrived.values())
    judged = state.released[0]
    assert all(hist[-1][0][0] >= judged - retain for hist in state.history.values())


@pytest.mark.parametrize("gap_hours", [0, 3, 30])
def test_chains_just_before_a_gap_are_found_when_a_backlog_is_caught_up_on(gap_hours: int) -> None:
    """A correlator catching up on a backlog reads facts from after a quiet spell in event time (a night, a
    weekend) in the same batch as the last facts before it: the watermark releases the earlier ones after
    the later ones arrived. Their keys' windows must be trimmed against the fact judged, not the latest
    seen: trimmed against the latest, a tier-stepping chain and a grant burst of the minutes before a gap of
    more than an hour were forgotten step by step and never found."""
    import functools

    from pipeline.keyed_state import KeyedState

    c = _bare_correlator()
    c.baselines = lambda key: BASELINE
    later = T0 + 60 * MIN + gap_hours * 60 * MIN
    after_gap = {"action": "assign_role", "run_id": "r-after", "occurred_at": later,
                 "resource.resource_id": "role/Reader", "resource.privilege_tier": 1}
    cases = [
        (True, [tier(0, 1, 0, "r1"), tier(1, 2, 5, "r2"), tier(2, 3, 10, "r3")],
         fact(5, **{**after_gap, "target.identity_id": "u-step"}), "AG-XRN-001"),
        (False, _burst(6), fact(5, **{**after_gap, "agent.agent_id": "agent-burst"}), "AG-XRN-004"),
    ]
    for by_target, chain, tail, code in cases:
        state = KeyedState(by_target, stale_of=None if by_target else c._stale_of())
        for ev in [*chain, tail]:  # one batch: the backlog's facts, the first one after the gap last
            state.add(ev)
        found, late = state.judge_due(state.max_seen_ms - c.grace_ms, 7_200_000,
                                      functools.partial(c._judge, state), rejudge=functools.partial(c._rejudge, state))
        assert late == 0
        assert code in [f.spec.code for f in found], (gap_hours, code, [f.spec.code for f in found])


def test_the_by_target_entry_test_turns_away_only_facts_no_rule_finds_anything_on() -> None:
    """``may_find_by_target`` lets the correlator skip judging most by-target facts at the watermark. Over random
    facts of one target (actions, tiers, outcomes, authorities, SoD partners, lifecycle states, partitions and
    event ids drawn from small sets, so chains, copies and leavers do occur), with random history and holdings:
    a fact it turns away gets nothing from any by-target rule."""
    import random

    from pipeline.keyed_state import order
    from pipeline.scoring.crossrun import may_find_by_target

    rnd = random.Random(11)
    actions = ["create_account", "disable_account", "delete_account", "assign_role", "grant_entitlement",
               "add_group_member", "remove_role", "revoke_entitlement"]
    access = [(None, "role/Admin"), (None, "role/Reader"), ("aws-admin", "role/Admin"), ("ap-create-vendor", "sap"),
              ("ap-approve-payment", "sap"), ("read-only", "wiki"), (None, "user-account")]

    def draw(t: int) -> TransitionDict:
        entitlement, resource = rnd.choice(access)
        human = rnd.random() < 0.2
        return fact(rnd.randrange(3), **{
            "action": rnd.choice(actions), "target.identity_id": "u-x", "run_id": f"r{rnd.randrange(5)}",
            "event_id": f"e{rnd.randrange(40)}", "occurred_at": T0 + t * MIN, "resource.system": "aws",
            "resource.resource_id": resource, "resource.entitlement": entitlement,
            "resource.privilege_tier": rnd.randrange(4),
            "decision.outcome": "granted" if rnd.random() < 0.85 else "denied",
            "decision.authority": "human" if human else "agent", "decision.approved_by": "ciso" if human else None,
            "target.lifecycle_state": "active" if rnd.random() < 0.8 else "terminated"})

    turned_away = found = 0
    for _ in range(1_500):
        earlier = sorted((draw(t) for t in rnd.sample(range(0, 60), rnd.randrange(7))), key=order)
        holdings = tuple(sorted((draw(-rnd.randrange(1, 60 * 24 * 90)) for _ in range(rnd.randrange(3))), key=order))
        ev = draw(60)
        same = [h for h in earlier if h["event_id"] == ev["event_id"] and order(h) < order(ev)]
        left = any(h["action"] in ("disable_account", "delete_account") and h["decision"]["outcome"] == "granted"
                   for h in (*holdings, *earlier))
        cx = CrossRunContext(POLICY, "u-x", history=earlier, holdings=holdings, same_id=same)
        result = correlate(ev, cx, BY_TARGET_RULES)
        found += bool(result)
        if not may_find_by_target(ev, POLICY.policy, copies=bool(same), left=left):
            turned_away += 1
            assert result == [], (ev, earlier, holdings, result)
    assert turned_away > 300 and found > 50, (turned_away, found)  # both halves were exercised


def test_the_by_target_entry_test_changes_no_finding_of_the_correlator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the demo workload's facts (planted and cross-run cases), the correlator's judging at the watermark
    finds the same with the entry test as with every fact judged by every rule, and skips most facts."""
    from pipeline import correlator as correlator_module
    from pipeline.facts import is_access_change
    from pipeline.keyed_state import KeyedState
    from pipeline.scoring import crossrun

    facts = [f for f in _workload_facts(3_000) if is_access_change(f)]  # what by-target partitions carry
    calls = {"skipped": 0}

    def judged(gate: bool) -> list[str]:
        def entry(*a: Any, **k: Any) -> bool:
            ok = crossrun.may_find_by_target(*a, **k)
            calls["skipped"] += not ok
            return ok if gate else True
        monkeypatch.setattr(correlator_module, "may_find_by_target", entry)
        c, state = _bare_correlator(), KeyedState(True)
        for ev in facts:
            state.add(ev)
        found, _ = state.judge_due(2**62, 7_200_000, lambda key, ev: c._judge(state, key, ev))
        return sorted(f.finding_id for f in found)

    gated = judged(True)
    assert gated == judged(False) and len(gated) >= 3, gated
    assert calls["skipped"] > len(facts) // 2, calls  # counted over both passes: most by-target facts


def test_an_edge_read_late_into_the_principal_of_a_judged_grant_still_finds_the_laundering() -> None:
    """Power reaches an agent also through its principal: an agent acting on behalf of ``agent-p`` that
    grants privileged access to ``agent-a``, which had given ``agent-p`` a role, launders it (the rule's
    frontier starts at the principal too). When that edge is read after the grant was judged, the grant is
    judged again although its agent is not downstream of the edge: it acts for the edge's delegate."""
    from pipeline.correlator import _Tally
    from pipeline.keyed_state import KeyedState

    c, graph, produced = _correlator_with_graph()
    state = c._hold(c.settings.topic_facts_by_agent, partition_for("agent-x", c.settings.facts_partitions),
                    KeyedState(by_target=False))
    grant = _privileged_grant("agent-x", "agent-a", 30, **{"agent.on_behalf_of": "agent-p"})
    assert c._judge(state, "agent-x", grant) == []  # judged before the edge was read
    state.apply("agent-x", grant, 86_400_000)
    [edge] = _edge_records(("agent-a", "agent-p"))
    assert [f.spec.code for f in run_key([grant], "agent-x", by_target=False,
                                         delegations=_graph([as_event(edge)]))] == ["AG-XRN-003"]
    graph.add(edge)
    tally = _Tally()
    c._late_edges(T0 + 31 * MIN, tally)
    assert [f.spec.code for f in tally.found] == ["AG-XRN-003"] and len(produced) == 1
    assert tally.late_edges == 1 and "'agent-p'" in tally.found[0].message
    assert state.acting_for == {"agent-p": {"agent-x"}}
    state.released = (T0 + 3 * 86_400_000, 0, "", 0, 0)  # agent-x quiet for days: it leaves, and its index entry
    assert state.expire(86_400_000, 86_400_000) == 1 and state.acting_for == {} and state.principals == {}


def test_transient_privilege_without_a_grant_in_its_window_is_what_the_rule_finds_without_the_test() -> None:
    """AG-XRN-002 builds no context for a revoke with no executed grant in the transient window before it
    (``crossrun._granted_since``). Over random revokes and account ends of one target, with random histories
    (grants, revokes, denied decisions, human approvals, systems, tiers, privileged names, times inside and
    outside the transient window, copies, one or several partitions, what the scorer said), the rule finds
    exactly what the per-run rule over the history finds without that test."""
    import random

    from pipeline.keyed_state import order
    from pipeline.scoring import crossrun, escalation

    rnd = random.Random(17)
    grants = ["assign_role", "grant_entitlement", "add_group_member"]
    ends = ["remove_role", "revoke_entitlement", "remove_group_member", "disable_account", "delete_account"]
    access = [(None, "role/Admin"), (None, "role/Reader"), ("aws-admin", "role/Admin"), ("AWS-ADMIN ", "role/x"),
              ("read-only", "wiki"), (None, "user-account"), (None, "grp-admins")]

    def draw(t_s: int, actions: list[str]) -> TransitionDict:
        entitlement, resource = rnd.choice(access)
        human = rnd.random() < 0.2
        return fact(rnd.randrange(3), **{
            "action": rnd.choice(actions), "target.identity_id": "u-x", "run_id": f"r{rnd.randrange(4)}",
            "event_id": f"e{rnd.randrange(30)}", "occurred_at": T0 + t_s * 1000,
            "resource.system": rnd.choice(["aws", "aws", "entra-id"]), "resource.resource_id": resource,
            "resource.entitlement": entitlement, "resource.privilege_tier": rnd.randrange(4),
            "decision.outcome": "granted" if rnd.random() < 0.85 else "denied",
            "decision.authority": "human" if human else "agent", "decision.approved_by": "ciso" if human else None})

    skipped = found = 0
    for _ in range(3_000):
        ev = draw(3_600, ends)
        if rnd.random() < 0.3:
            ev = said(ev, "AG-ESC-003")
        earlier = sorted((draw(rnd.randrange(1_800, 3_600), rnd.choice([grants, ends, grants + ends]))
                          for _ in range(rnd.randrange(6))), key=order)
        cx = CrossRunContext(POLICY, "u-x", history=earlier)
        want = crossrun._from_per_run(escalation.transient_privilege, crossrun.XRN_TRANSIENT_PRIVILEGE, ev, cx)
        got = crossrun.transient_across_runs(ev, cx)
        assert [(f.finding_id, f.message) for f in got] == [(f.finding_id, f.message) for f in want], (ev, earlier)
        found += bool(want)
        skipped += not crossrun._granted_since(earlier, ev["occurred_at"] - 900_000)
    assert skipped > 1_000 and found > 100, (skipped, found)  # both halves were exercised


@pytest.mark.parametrize("tier", [None, -(2**31), -3, -1, 0, 1, 2, 3, 4, 7, 8, 9, 12, 2**31 - 1, 2.7])
def test_tie_rank_and_fact_order_rank_as_the_rule_states(tier: Any) -> None:
    """``tie_rank`` (and ``fact_order``, which has it inline) by its stated rule, for every action: a group's
    creation and an account's disabling first, then grants by tier (lowest first, within 0..8), then revokes."""
    from pipeline.events import REVOKES, Action
    from pipeline.scoring.rules import tie_rank

    for action in [*Action, "create_group", "something_else"]:
        ev: Any = {"action": str(action), "resource": {"privilege_tier": tier}, "occurred_at": 5, "event_id": "e",
                   "source_partition": 1, "source_offset": 2}
        if action in ("create_group", "disable_account"):
            want = 0
        elif action in REVOKES:
            want = 10
        else:
            want = 1 + min(max(int(tier or 0), 0), 8)
        assert tie_rank(ev) == want and fact_order(ev) == (5, want, "e", 1, 2), (action, tier)
        ev["action"] = action  # the enum itself, as scorers' events carry it
        assert tie_rank(ev) == want and fact_order(ev) == (5, want, "e", 1, 2), (action, tier)


@pytest.mark.parametrize("baseline", [None, AgentBaseline("any", events=3), WARM,
                                      AgentBaseline("any", events=500, grants_per_hour=2.0)])
def test_the_by_agent_entry_test_changes_no_finding_of_the_correlator(monkeypatch: pytest.MonkeyPatch,
                                                                     baseline: AgentBaseline | None) -> None:
    """``may_find_by_agent`` lets the correlator skip building the context of most executed grants at the
    watermark. Over the demo workload's facts, grant-rate bursts over one and six partitions, stale decisions
    and group nesting chains (and a random mix of them), with cold, warm and no baselines, the by-agent
    judging finds the same with the entry test as with every grant judged by every rule, and skips some."""
    import random

    from pipeline import correlator as correlator_module
    from pipeline.scoring import crossrun

    rnd = random.Random(7)
    mixed = [dict(f, agent={**f["agent"], "agent_id": "agent-mix"}) for f in
             rnd.sample(_burst(6) + decisions([(i % 6, i % 3 == 0) for i in range(21)]) + nesting((0, 2, 4)), 40)]
    facts = (_workload_facts(2_000) + _burst(6) + _burst(1) + decisions([(i % 6, i % 3 == 0) for i in range(21)])
             + decisions([(i % 2, i % 2 == 0) for i in range(30)], agent="agent-drift2") + nesting((0, 2, 4))
             + mixed)
    calls = {"skipped": 0}

    def judged(gate: bool) -> list[str]:
        def entry(*a: Any, **k: Any) -> bool:
            ok = crossrun.may_find_by_agent(*a, **k)
            calls["skipped"] += not ok
            return ok if gate else True
        monkeypatch.setattr(correlator_module, "may_find_by_agent", entry)
        c = _bare_correlator()
        c.baselines = lambda key: baseline
        state = c._new_state(False)
        for ev in facts:
            state.add(ev)
        found, _ = state.judge_due(2**62, 7_200_000, lambda key, ev: c._judge(state, key, ev))
        return sorted(f.finding_id for f in found)

    gated = judged(True)
    assert gated == judged(False), gated
    assert calls["skipped"] > 100, calls
    if baseline is WARM:
        assert len(gated) >= 3, gated  # rate, stale share and nesting chains among them
