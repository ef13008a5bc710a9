"""Hidden escalation patterns: positives, reported once with every step named, and benign look-alikes."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.scoring.catalogue import CATALOGUE, ESCALATION_PATTERNS
from pipeline.scoring.engine import score
from pipeline.scoring.findings import Category, Severity
from pipeline.scoring.policy import default_policy_path
from tests.unit.scoring_cases import (
    ESC_CASES,
    ROGUE,
    group_chain,
    tier_chain,
    transient_chain,
)
from tests.unit.scoring_factory import AGENT, T0, chain, context_for, event, policy_with, replay


@pytest.mark.parametrize(("steps", "common", "code", "completes"), [c[1:] for c in ESC_CASES],
                         ids=[c[0] for c in ESC_CASES])
def test_pattern(steps: list[dict[str, Any]], common: dict[str, Any], code: str, completes: int | None) -> None:
    events = chain(*steps, each=common)
    per_event = replay(events)
    hits = [i for i, found in enumerate(per_event) if code in found]
    assert hits == ([] if completes is None else [completes]), per_event
    if completes is not None:
        [finding] = [f for f in score(events[completes], context_for(events[completes], events[:completes])).findings
                     if f.code == code]
        assert finding.severity is Severity.critical and finding.category is Category.escalation
        assert finding.message.startswith(ESCALATION_PATTERNS[code] + ":")
        assert finding.related_event_ids[-1] == events[completes]["event_id"]
        assert set(finding.related_event_ids) <= {e["event_id"] for e in events}


def test_group_nesting_names_every_step() -> None:
    events = chain(*group_chain(), each={"agent.agent_id": ROGUE})
    [f] = [f for f in score(events[2], context_for(events[2], events[:2])).findings if f.code == "AG-ESC-001"]
    assert f.related_event_ids == tuple(e["event_id"] for e in events)


def test_tier_stepping_names_every_step() -> None:
    events = chain(*tier_chain(0, 1, 2, 3))
    [f] = [f for f in score(events[3], context_for(events[3], events[:3])).findings if f.code == "AG-ESC-002"]
    assert f.related_event_ids == tuple(e["event_id"] for e in events)


def test_reported_once_not_on_later_events() -> None:
    events = chain(*group_chain(), group_chain()[2] | {"resource.resource_id": "role/PrivilegedRoleAdministrator"},
                   each={"agent.agent_id": ROGUE})
    assert [("AG-ESC-001" in found) for found in replay(events)] == [False, False, True, False]
    stepping = chain(*tier_chain(1, 2, 3), tier_chain(3)[0] | {"resource.resource_id": "role/Other"})
    assert [("AG-ESC-002" in found) for found in replay(stepping)] == [False, False, True, False]
    transient = chain(*transient_chain(60_000), transient_chain(0)[1] | {"occurred_at": T0 + 120_000})
    assert [("AG-ESC-003" in found) for found in replay(transient)] == [False, True, False]


def test_tier_stepping_a_second_climb_of_new_steps_is_reported_again() -> None:
    """A completed climb consumes its steps (a repeat of its top is not reported), but a new climb of new
    unapproved steps is a new escalation."""
    stepping = chain(*tier_chain(1, 2, 3), *tier_chain(1, 2, 3))
    assert [("AG-ESC-002" in found) for found in replay(stepping)] == [False, False, True, False, False, True]


def test_chain_across_runs_on_one_target() -> None:
    """Tier stepping split over three runs still completes: the target history joins them."""
    steps = tier_chain(1, 2, 3)
    events = [event({**s, "run_id": f"run-{i}", "occurred_at": T0 + i * 60_000}) for i, s in enumerate(steps)]
    assert "AG-ESC-002" in replay(events)[2]


def test_chain_outside_the_window_is_not_joined() -> None:
    steps = tier_chain(1, 2, 3)
    events = [event({**s, "run_id": f"run-{i}", "occurred_at": T0 + i * 3_000_000}) for i, s in enumerate(steps)]
    assert "AG-ESC-002" not in replay(events)[2]


def test_group_nesting_across_runs_by_one_agent() -> None:
    steps = group_chain()
    events = [event({**s, "run_id": f"run-g{i}", "agent.agent_id": ROGUE, "occurred_at": T0 + i * 1000})
              for i, s in enumerate(steps)]
    assert "AG-ESC-001" in replay(events)[2]


def test_escalation_patterns_are_the_closed_set_of_escalation_codes() -> None:
    esc = {code for code, s in CATALOGUE.items() if s.category is Category.escalation}
    assert set(ESCALATION_PATTERNS) == esc
    assert set(ESCALATION_PATTERNS.values()) == {"group_nesting", "tier_stepping", "transient_privilege",
                                                "delegation_self_grant", "delegation_laundering"}


def test_plain_self_grant_is_not_a_delegation_chain() -> None:
    ev = event({"target.identity_id": AGENT, "target.identity_type": "agent"})
    found = [f.code for f in score(ev, context_for(ev)).findings]
    assert "AG-AUTH-003" in found and "AG-ESC-004" not in found


def test_tier_stepping_ends_at_the_policys_privileged_tier() -> None:
    # The chain ends at privileged.min_tier, not at a hard-coded tier 3: 0 -> 1 -> 2 is escalation when
    # the policy makes tier 2 privileged (and is benign under the default policy, row stops-at-tier-2).
    text = default_policy_path().read_text()
    assert "  min_tier: 3\n" in text
    tier2 = policy_with(text.replace("  min_tier: 3\n", "  min_tier: 2\n"))
    events = chain(*tier_chain(0, 1, 2))
    assert ["AG-ESC-002" in found for found in replay(events, policy=tier2)] == [False, False, True]
    assert not any("AG-ESC-002" in found for found in replay(events))


@pytest.mark.parametrize("top", [{"resource.entitlement": "global-admin"},
                                 {"resource.resource_id": "role/GlobalAdmin"}],
                         ids=["privileged entitlement", "privileged group"])
@pytest.mark.parametrize("claimed", [2, 0])
def test_a_climb_ending_in_a_privileged_name_is_stepping_whatever_tier_it_claims(top: dict[str, str],
                                                                                  claimed: int) -> None:
    """privileged.entitlements and .groups are privileged "whatever tier an event claims" (docs/policy.md): a
    climb 1 -> 2 whose last step grants global-admin labelled tier 2 (or 0) still ends in privileged access."""
    last = {**tier_chain(3)[0], "resource.privilege_tier": claimed, **top}
    events = chain(*tier_chain(1, 2), last)
    assert ["AG-ESC-002" in found for found in replay(events)] == [False, False, True]
    plain = {**tier_chain(3)[0], "resource.privilege_tier": claimed}  # the same step without the name: a look-alike
    assert not any("AG-ESC-002" in found for found in replay(chain(*tier_chain(1, 2), plain)))


@pytest.mark.parametrize("runs", [("run-1", "run-2", "run-3"), ("run-3", "run-2", "run-1")])
def test_a_climb_over_runs_stamped_in_one_millisecond_completes_whatever_the_run_ids(runs: tuple[str, ...]) -> None:
    """Events of one millisecond have no order of their own: the history is sorted so a chain completes
    (grants by tier), not by the run ids the agent picks."""
    events = [event({**s, "run_id": runs[i], "occurred_at": T0}) for i, s in enumerate(tier_chain(1, 2, 3))]
    assert "AG-ESC-002" in replay(events)[2]
