"""Property tests: scoring is deterministic and never raises on any schema-valid event and context."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.events import Action, Authority, IdentityType, LifecycleState, Outcome, Recommender, TriggerKind
from pipeline.scoring.context import AgentBaseline, ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.findings import risk_level, risk_score
from tests.unit.scoring_factory import T0, default_policy

ids = st.sampled_from(["agent-a", "agent-b", "svc-x", "u1", "u2", "grp-tmp", "role/Admin", "aws-admin",
                       "ap-create-vendor", "ap-approve-payment", "entra-id", "aws", "payroll-prod"])
text = st.text(min_size=1, max_size=12)
name = st.one_of(ids, text)
hexhash = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


def _enum(e: Any) -> st.SearchStrategy[str]:
    return st.sampled_from([m.value for m in e])


events = st.fixed_dictionaries({
    "event_id": st.uuids().map(str),
    "occurred_at": st.integers(T0 - 10**7, T0 + 10**7),
    "workflow_id": st.sampled_from(["jml-provisioning", "access-request", "auth-gateway", "other"]),
    "workflow_version": text, "run_id": st.sampled_from(["r1", "r2"]), "step": st.integers(0, 2**31 - 1),
    "from_state": text, "to_state": text,
    "agent": st.fixed_dictionaries({"agent_id": name, "agent_version": text,
                                    "on_behalf_of": st.none() | name, "model_id": st.none() | text}),
    "trigger": st.fixed_dictionaries({"kind": _enum(TriggerKind), "ref": st.none() | st.text(max_size=8)}),
    "action": _enum(Action),
    "target": st.fixed_dictionaries({"identity_id": name, "identity_type": _enum(IdentityType),
                                     "lifecycle_state": _enum(LifecycleState)}),
    "resource": st.fixed_dictionaries({"system": name, "resource_id": name, "entitlement": st.none() | name,
                                       "privilege_tier": st.integers(0, 3)}),
    "inputs_used": st.lists(st.fixed_dictionaries({"name": name, "source": text}), max_size=12),
    "decision": st.fixed_dictionaries({"outcome": _enum(Outcome), "authority": _enum(Authority),
                                       "recommended_by": st.none() | _enum(Recommender),
                                       "approved_by": st.none() | st.text(max_size=6),
                                       "approval_ref": st.none() | text}),
    "policy": st.fixed_dictionaries({"policy_id": st.sampled_from(["iga-access-policy", "x"]),
                                     "policy_version": st.sampled_from(["7", "2", " ", ""]),
                                     "decision_id": st.none() | text}),
    "evidence": st.fixed_dictionaries({"event_hash": hexhash, "prev_event_hash": st.none() | hexhash,
                                       "signature": st.none() | st.text(max_size=70),
                                       "key_id": st.none() | st.sampled_from(["k1", "k2"])}),
    "attributes": st.dictionaries(text, text, max_size=3),
    "tenant": st.none() | text,
})

baselines = st.none() | st.builds(
    AgentBaseline, agent_id=name, events=st.integers(0, 10**6), actions=st.frozensets(_enum(Action)),
    systems=st.frozensets(name), entitlements=st.frozensets(name), inputs=st.frozensets(name),
    max_tier=st.integers(0, 3), grants_per_hour=st.floats(0, 1e6), stale_policy_share=st.floats(0, 1))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ev=events, history=st.lists(events, max_size=8), b=baselines, require=st.booleans(),
       entitlements=st.frozensets(name, max_size=4))
def test_scoring_is_total_and_deterministic(ev: dict[str, Any], history: list[dict[str, Any]],
                                            b: AgentBaseline | None, require: bool,
                                            entitlements: frozenset[str]) -> None:
    ctx = ScoringContext(
        policy=default_policy(), run_history=tuple(history), target_history=tuple(history),
        agent_history=tuple(history), target_entitlements=entitlements, baseline=b,
        seen_event_hashes={h["event_id"]: h["evidence"]["event_hash"] for h in history},
        signing_keys={"k1": b"key"}, require_signatures=require)
    first, second = score(ev, ctx), score(ev, ctx)
    assert first == second
    assert first.risk_score == risk_score(first.findings) and first.risk_level == risk_level(first.risk_score)
    for f in first.findings:
        assert f.message and "\n" not in f.message
