"""docs/rules.md "Adding a rule", followed: a throwaway rule declared in one place (a fixture) is run by the
engine, listed by the catalogue and `agentgov rules`, and gone again once withdrawn."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.events import TransitionDict
from pipeline.scoring.catalogue import ASI03, CATALOGUE, PR_AA_05, RULES, C, S, render_catalogue, rule, spec
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.findings import Finding
from tests.unit.scoring_factory import codes, context_for, event

CODE = "AG-TEST-001"


@pytest.fixture
def throwaway_rule() -> Iterator[str]:
    """The guide's steps 2 and 3, in one place: a spec and the function beside it under ``@rule``."""
    night_owl = spec(
        CODE, "Grant to a night-shift test identity", S.low, C.risk,
        "A throwaway rule: a grant to the identity 'u-night'.",
        ("target.identity_id", "action"), (ASI03, PR_AA_05),
    )

    @rule(night_owl)
    def grant_to_night_owl(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
        if ev["target"]["identity_id"] != "u-night":
            return []
        return [night_owl.finding(f"{ev['action']} to {ev['target']['identity_id']!r}")]

    try:
        yield CODE
    finally:  # withdraw it: a test rule must not leak into the other tests' catalogue
        RULES.remove(grant_to_night_owl)
        del CATALOGUE[CODE]


def test_a_rule_declared_in_one_place_is_run_and_catalogued(throwaway_rule: str) -> None:
    # The guide's step 4: a row that fires and a benign neighbour.
    hit = event({"target.identity_id": "u-night"})
    assert throwaway_rule in codes(hit, context_for(hit))
    miss = event()
    assert throwaway_rule not in codes(miss, context_for(miss))
    found = next(f for f in score(hit, context_for(hit)).findings if f.code == throwaway_rule)
    assert found.severity is S.low and found.message == "add_group_member to 'u-night'"

    assert throwaway_rule in {e["code"] for e in json.loads(render_catalogue("json"))}
    assert f"## {throwaway_rule} Grant to a night-shift test identity" in render_catalogue("markdown")
    out = CliRunner().invoke(main, ["rules"])
    assert out.exit_code == 0 and f"{throwaway_rule}  low" in out.output


def test_the_rule_is_gone_after_the_fixture() -> None:
    assert CODE not in CATALOGUE
    assert all(r.__name__ != "grant_to_night_owl" for r in RULES)
    hit = event({"target.identity_id": "u-night"})
    assert CODE not in codes(hit, context_for(hit))


def test_a_rule_must_emit_a_declared_code() -> None:
    from pipeline.scoring.catalogue import RuleSpec

    stray = RuleSpec(CODE, "t", S.low, C.risk, "m", ("action",), (ASI03,))
    with pytest.raises(ValueError, match="not declared with spec"):
        rule(stray)
    with pytest.raises(ValueError, match="duplicate finding code"):
        spec("AG-AUTH-003", "t", S.low, C.risk, "m", ("action",), (ASI03,))
