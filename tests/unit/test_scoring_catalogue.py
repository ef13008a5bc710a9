"""The catalogue is complete: every code has refs, evidence fields and a rule that emits it; docs match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.events import TransitionDict
from pipeline.scoring.catalogue import CATALOGUE, MARKDOWN_END, render_catalogue
from pipeline.scoring.context import ScoringContext
from pipeline.scoring.engine import score
from tests.unit.scoring_cases import DRIFT_CASES, ESC_CASES, RULE_CASES, SOD, SOD_CASES
from tests.unit.scoring_factory import baseline, chain, context_for, event

ROOT = Path(__file__).resolve().parents[2]


def _emitted() -> set[str]:
    """Codes the rules actually emit on the positive rows of every table, plus the evidence scenarios."""
    found: set[str] = set()

    def run(ev: TransitionDict, ctx: ScoringContext) -> None:
        found.update(f.code for f in score(ev, ctx).findings)

    for _, changes, *_ in RULE_CASES:
        ev = event(changes)
        run(ev, context_for(ev))
    for _, changes, b, *_ in DRIFT_CASES:
        ev = event(changes)
        run(ev, context_for(ev, baseline=baseline(**b)))
    burst = [event({"run_id": f"r{i}", "target.identity_id": f"u{i}"}) for i in range(30)]
    run(burst[-1], context_for(burst[-1], burst[:-1], baseline=baseline()))
    stale = [event({"run_id": f"r{i}", "policy.policy_version": "2"}) for i in range(12)]
    run(stale[-1], context_for(stale[-1], stale[:-1], baseline=baseline()))
    for _, before, now, _ in SOD_CASES:
        events = chain(*[{**SOD, **b} for b in before], {**SOD, **now})
        run(events[-1], context_for(events[-1], events[:-1]))
    for _, steps, common, *_ in ESC_CASES:
        events = chain(*steps, each=common)
        for i, ev in enumerate(events):
            run(ev, context_for(ev, events[:i]))
    tampered = event()
    tampered["step"] = 5
    run(tampered, context_for(tampered, require_signatures=True))  # hash, chain, signature
    first = event()
    run(first, context_for(first, [first]))  # replay
    dup = event({"event_id": first["event_id"], "resource.resource_id": "grp-x"})
    run(dup, context_for(dup, [first]))
    foreign = event({"agent.agent_id": "agent-other"}, key=("k1", b"key-1"))
    run(foreign, context_for(foreign, signing_keys={"k1": b"key-1"}, key_agents={"k1": ("agent-jml-*",)}))
    return found


def test_every_code_is_emitted_by_some_rule() -> None:
    # AG-XRN-* come from the correlator's cross-run rules; test_scoring_crossrun.py raises each of them.
    cross_run = {code for code in CATALOGUE if code.startswith("AG-XRN-")}
    assert set(CATALOGUE) - cross_run - _emitted() == set()


@pytest.mark.parametrize("code", sorted(CATALOGUE))
def test_entry_is_complete(code: str) -> None:
    s = CATALOGUE[code]
    assert s.refs and s.evidence_fields and s.title and s.meaning
    assert any(r.startswith("OWASP-") for r in s.refs) and any(r.startswith("NIST-CSF") for r in s.refs)
    assert code.startswith("AG-") and len(code.split("-")) == 3


def test_render_formats() -> None:
    doc = json.loads(render_catalogue("json"))
    assert [e["code"] for e in doc] == sorted(CATALOGUE)
    assert {"code", "severity", "category", "title", "meaning", "evidence_fields", "refs"} <= set(doc[0])
    text = render_catalogue("text")
    assert all(code in text for code in CATALOGUE)
    with pytest.raises(ValueError, match="unknown catalogue format"):
        render_catalogue("yaml")


def test_docs_rules_md_is_generated_from_the_catalogue() -> None:
    doc = (ROOT / "docs" / "rules.md").read_text()
    generated, marker, guide = doc.partition(MARKDOWN_END)
    assert marker, "docs/rules.md lost its end-of-catalogue marker"
    assert generated + marker + "\n" == render_catalogue("markdown"), \
        "regenerate: replace docs/rules.md above the end marker with `agentgov rules --format markdown`"
    assert "## Adding a rule" in guide
