"""The policy file: validation errors name the field, defaults inherit, the default policy is sound."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.scoring.policy import check_policy, default_policy_path, load_policy, parse_policy

V = 'version: "1"\n'

ERRORS: list[tuple[str, str, str]] = [
    # (id, yaml, field the error must name)
    ("unquoted-version", "version: 7\n", "version"),
    ("missing-version", "workflows: {}\n", "version"),
    ("unknown-top-level-key", V + "separation_of_dutie: []\n", "separation_of_dutie"),
    ("unknown-action", V + "workflows: {w: {allowed_actions: [grant]}}\n", "workflows.w.allowed_actions.0"),
    ("unknown-trigger-kind", V + "defaults: {lifecycle: {trigger_actions: {levaer: []}}}\n",
     "defaults.lifecycle.trigger_actions.levaer"),
    ("unknown-lifecycle-state", V + "defaults: {lifecycle: {blocked_states: {fired: []}}}\n",
     "defaults.lifecycle.blocked_states.fired"),
    ("tier-out-of-range", V + "defaults: {human_approval_tiers: [4]}\n", "human_approval_tiers"),
    ("negative-max-signals", V + "workflows: {w: {max_signals: -1}}\n", "workflows.w.max_signals"),
    ("toxic-pair-same-name", V + "separation_of_duties: [{name: p, entitlements: [a, a]}]\n",
     "separation_of_duties.0"),
    ("toxic-pair-three-names", V + "separation_of_duties: [{name: p, entitlements: [a, b, c]}]\n",
     "separation_of_duties.0.entitlements"),
    ("transient-longer-than-window", V + "escalation: {window_seconds: 60, transient_revoke_seconds: 120}\n",
     "transient_revoke_seconds"),
    ("rate-factor-not-above-one", V + "drift: {rate_factor: 1.0}\n", "drift.rate_factor"),
    ("share-above-one", V + "drift: {stale_policy_share: 1.5}\n", "drift.stale_policy_share"),
    ("not-a-mapping", "- a\n- b\n", "mapping"),
    ("bad-yaml", "version: [\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "field"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_invalid_policy_names_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_policy(text, "p.yaml")
    assert field in str(exc.value) and str(exc.value).startswith("p.yaml")


def test_workflow_inherits_unset_fields_and_null_lifts_a_restriction() -> None:
    p = parse_policy(V + """
defaults: {allowed_actions: [recommend], allowed_systems: [okta], max_signals: 3, human_approval_tiers: [3]}
workflows:
  w1: {allowed_actions: [allow_auth]}
  w2: {allowed_systems: null}
""").policy
    w1, w2, other = p.boundary_for("w1"), p.boundary_for("w2"), p.boundary_for("nope")
    assert w1.allowed_actions == {"allow_auth"} and w1.allowed_systems == {"okta"} and w1.max_signals == 3
    assert w2.allowed_actions == {"recommend"} and w2.allowed_systems is None
    assert other == p.default_boundary and other.human_approval_tiers == {3}


def test_workflow_lifecycle_merges_key_by_key_with_defaults() -> None:
    """Review rev_rules #3: each lifecycle key is a field of its own; setting one keeps the others from
    ``defaults`` (not the built-in defaults), and a map is replaced whole."""
    p = parse_policy(V + """
defaults:
  lifecycle:
    blocked_states: {terminated: [], on_leave: [], pre_hire: [create_account]}
    access_triggers: [joiner]
    trigger_actions: {leaver: [disable_account], mover: [assign_role]}
workflows:
  only-trigger-actions: {lifecycle: {trigger_actions: {leaver: [remove_role]}}}
  only-access-triggers: {lifecycle: {access_triggers: [joiner, mover]}}
  none-set: {}
""").policy
    defaults = p.default_boundary
    assert defaults.blocked_states.keys() == {"terminated", "on_leave", "pre_hire"}
    ta, at, none = (p.boundary_for(w) for w in ("only-trigger-actions", "only-access-triggers", "none-set"))
    assert ta.trigger_actions == {"leaver": {"remove_role"}}  # replaced whole: mover's entry is not merged in
    assert ta.blocked_states == defaults.blocked_states and ta.access_triggers == {"joiner"}
    assert at.access_triggers == {"joiner", "mover"}
    assert at.blocked_states == defaults.blocked_states and at.trigger_actions == defaults.trigger_actions
    assert none == defaults


def test_workflow_lifecycle_key_falls_back_to_the_builtin_default_when_defaults_leaves_it_unset() -> None:
    p = parse_policy(V + "workflows: {w: {lifecycle: {access_triggers: [joiner]}}}\n").policy
    w = p.boundary_for("w")
    assert w.access_triggers == {"joiner"}
    assert w.blocked_states == {"terminated": frozenset(), "pre_hire": {"create_account"}}


def test_input_allowlist_per_action_falls_back_to_default_inputs() -> None:
    text = V + "defaults: {default_inputs: [a], input_allowlist: {deny_auth: [b]}}\n"
    b = parse_policy(text).policy.boundary_for("x")
    assert b.inputs_for("deny_auth") == {"b"} and b.inputs_for("allow_auth") == {"a"}


def test_approved_versions() -> None:
    p = parse_policy(V + 'approved_policy_versions: {pol: ["3", "4"]}\n').policy
    assert p.version_approved("pol", "4") is True
    assert p.version_approved("pol", "2") is False and p.version_approved("other", "4") is False
    assert p.approved_policy_refs() == ["pol@3", "pol@4"]
    assert parse_policy(V).policy.version_approved("pol", "1") is None  # not configured: rule off


def test_sod_partners_both_ways() -> None:
    p = parse_policy(V + "separation_of_duties: [{name: vp, entitlements: [a, b]}]\n").policy
    assert p.sod_partners("a") == (("b", "vp"),) and p.sod_partners("b") == (("a", "vp"),)
    assert p.sod_partners("c") == ()


def test_privileged_and_sod_names_match_case_insensitively_and_trimmed() -> None:
    p = parse_policy(V + """
privileged: {entitlements: [Global-Admin], groups: [role/GlobalAdmin]}
separation_of_duties: [{name: vp, entitlements: [AP-Create-Vendor, ap-approve-payment]}]
""").policy
    assert p.privileged_name("x", "global-admin") and p.privileged_name("x", " GLOBAL-ADMIN\u200b")
    assert p.privileged_name("ROLE/globaladmin", None) and not p.privileged_name("role/GlobalAdmins", None)
    assert p.sod_partners("ap-create-vendor ") == (("ap-approve-payment", "vp"),)
    assert p.sod_partners("AP-APPROVE-PAYMENT") == (("AP-Create-Vendor", "vp"),)


def test_identity_providers_default_to_the_directories_and_match_case_insensitively() -> None:
    """AG-XRN-007 reads them: the default covers the directories the demo's leavers are disabled in (entra-id),
    and a case variant of a configured provider is that provider."""
    default = parse_policy(V).policy
    assert default.identity_provider("entra-id") and default.identity_provider("okta")
    assert default.identity_provider("Active-Directory ") and not default.identity_provider("salesforce")
    own = parse_policy(V + "identity_providers: [Ping-Directory]\n").policy
    assert own.identity_provider("ping-directory") and not own.identity_provider("entra-id")  # replaced, not merged
    assert not parse_policy(V + "identity_providers: []\n").policy.identity_provider("entra-id")
    assert "identity providers: active-directory, entra-id, okta" in check_policy(default_policy_path())


AGENT_PATTERN_ERRORS: list[tuple[str, str, str, str]] = [
    # (id, yaml, field the error must name, what it must say)
    ("empty-pattern", 'workflows: {w: {agents: [agent-jml-*, ""]}}', "workflows.w.agents", "pattern 1 is blank"),
    ("blank-pattern", 'workflows: {w: {agents: [" "]}}', "workflows.w.agents", "pattern 0 is blank"),
    ("invisible-pattern", 'workflows: {w: {agents: ["\\u200b"]}}', "workflows.w.agents", "pattern 0 is blank"),
    ("padded-pattern", 'workflows: {w: {agents: ["agent-jml-* "]}}', "workflows.w.agents", "would match no agent"),
    ("null-pattern", "workflows: {w: {agents: [null]}}", "workflows.w.agents.0", "valid string"),
    ("number-pattern", "workflows: {w: {agents: [7]}}", "workflows.w.agents.0", "valid string"),
    ("one-string-not-a-list", "workflows: {w: {agents: agent-jml-*}}", "workflows.w.agents", "valid tuple"),
    ("empty-list", "workflows: {w: {agents: []}}", "workflows.w.agents", "binds no agent"),
    ("in-defaults", 'defaults: {agents: [""]}', "defaults.agents", "pattern 0 is blank"),
]


@pytest.mark.parametrize(("text", "field", "says"), [e[1:] for e in AGENT_PATTERN_ERRORS],
                         ids=[e[0] for e in AGENT_PATTERN_ERRORS])
def test_agent_patterns_are_checked_at_load(text: str, field: str, says: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_policy(V + text + "\n", "p.yaml")
    message = str(exc.value)
    assert message.startswith("p.yaml: invalid policy: ") and f"{field}: " in message and says in message, message


def test_agents_inherit_from_defaults_and_null_lifts_them() -> None:
    p = parse_policy(V + """
defaults: {agents: [agent-any-*]}
workflows:
  own: {agents: [agent-jml-*, agent-hr-01]}
  inherits: {}
  lifted: {agents: null}
""").policy
    assert p.boundary_for("own").agents == ("agent-jml-*", "agent-hr-01")
    assert p.boundary_for("inherits").agents == ("agent-any-*",) == p.boundary_for("unknown").agents
    assert p.boundary_for("lifted").agents is None and p.agent_bound("lifted", "anyone")
    assert p.agent_bound("own", "agent-hr-01") and not p.agent_bound("own", "agent-any-1")
    assert p.agent_bound("unknown", "agent-any-1") and not p.agent_bound("unknown", "agent-jml-01")
    assert parse_policy(V).policy.default_boundary.agents is None  # unset: any agent, as before
    assert parse_policy(V).policy.agent_bound("w", "whoever")


def test_agent_patterns_match_as_identities_do() -> None:
    """``identity_key`` on the id and on the pattern, then ``fnmatchcase``: case and compatibility forms are one
    agent, a pattern matches the whole id (no prefix or substring match), and fnmatch's classes work."""
    from fnmatch import fnmatchcase

    from pipeline.events import identity_key

    patterns = ["Agent-JML-*", "agent-auth-0[1-3]", "\uff41gent-hr-?", "svc.[!x]"]
    p = parse_policy(V + f"workflows: {{w: {{agents: {patterns!r}}}}}\n").policy
    wide = "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in "agent-jml-07")
    ids = ["agent-jml-07", "AGENT-JML-07", wide, "xagent-jml-07", "agent-jml", "agent-auth-02", "agent-auth-04",
           "agent-hr-1", "Agent-HR-12", "svc.a", "svc.x", "svc-a", "agent-jm-07"]
    want = [any(fnmatchcase(identity_key(a), identity_key(pat)) for pat in patterns) for a in ids]
    assert [p.agent_bound("w", a) for a in ids] == want
    assert want == [True, True, True, False, False, True, False, True, False, True, False, False, False]


def test_agent_bound_remembered_answers_are_the_ones_it_computes() -> None:
    """The per-event answer is a dict lookup: remembered per (workflow, agent) as spelt, within a bound."""
    from pipeline.scoring import policy as policy_module

    p = parse_policy(V + "workflows: {w: {agents: [agent-jml-*]}, v: {agents: [agent-auth-*]}}\n").policy
    asked = [(w, f"{name}-{i % 7}") for i in range(200) for w in ("w", "v", "x")
             for name in ("agent-jml", "Agent-Auth", "agent-access")]
    want = [w == "x" or (w == "w" and a.startswith("agent-jml")) or (w == "v" and a.startswith("Agent-Auth"))
            for w, a in asked]
    assert [p.agent_bound(w, a) for w, a in asked] == want == [p.agent_bound(w, a) for w, a in asked]
    memo = p._c.agent_memo
    assert ("w", "agent-jml-0") in memo and ("x", "agent-jml-0") not in memo  # unrestricted: nothing to remember
    bound = policy_module.AGENT_MEMO_MAX
    try:
        policy_module.AGENT_MEMO_MAX = 3
        memo.clear()
        assert [p.agent_bound(w, a) for w, a in asked] == want and len(memo) <= 3
    finally:
        policy_module.AGENT_MEMO_MAX = bound


def test_default_policy_binds_each_demo_workflow_to_the_agents_the_workload_uses() -> None:
    """The demo's benign traffic stays clean (AG-BND-005), and no other agent can claim those workflows."""
    from pipeline.workload import AUTH_AGENTS, JML_AGENTS, REQ_AGENTS

    p = load_policy().policy
    for workflow, agents in (("jml-provisioning", JML_AGENTS), ("access-request", REQ_AGENTS),
                             ("auth-gateway", AUTH_AGENTS)):
        assert p.boundary_for(workflow).agents is not None, workflow
        assert all(p.agent_bound(workflow, a) for a in agents), workflow
        others = [a for w, group in (("jml-provisioning", JML_AGENTS), ("access-request", REQ_AGENTS),
                                     ("auth-gateway", AUTH_AGENTS)) if w != workflow for a in group]
        assert not any(p.agent_bound(workflow, a) for a in others), workflow
    assert "workflows.jml-provisioning: agents agent-jml-*;" in check_policy(default_policy_path())
    assert "defaults: agents any;" in check_policy(default_policy_path())


def test_toxic_pair_of_one_name_in_two_spellings_is_refused() -> None:
    with pytest.raises(ConfigError, match="two different names"):
        parse_policy(V + "separation_of_duties: [{name: vp, entitlements: [ap-pay, AP-Pay]}]\n")


def test_default_policy_is_valid_and_versioned() -> None:
    loaded = load_policy()
    assert isinstance(loaded.version, str) and loaded.version
    assert loaded.source == str(default_policy_path()) and len(loaded.sha256) == 64
    assert {"jml-provisioning", "access-request", "auth-gateway"} <= set(loaded.policy.workflows)
    jml = loaded.policy.boundary_for("jml-provisioning")
    assert jml.trigger_actions["leaver"] <= {"disable_account", "delete_account", "revoke_entitlement",
                                             "remove_role", "remove_group_member"}


def test_check_policy_summarises(tmp_path: Path) -> None:
    summary = check_policy(default_policy_path())
    assert "version 2026." in summary and "workflows.jml-provisioning" in summary and "warning" not in summary
    odd = tmp_path / "p.yaml"
    odd.write_text(V + "workflows: {w: {allowed_actions: [recommend], "
                       "lifecycle: {trigger_actions: {joiner: [create_account]}}}}\n")
    assert "warning: workflows.w.lifecycle.trigger_actions.joiner: create_account not in allowed_actions" \
        in check_policy(odd)
    with pytest.raises(ConfigError, match="cannot read"):
        check_policy(tmp_path / "missing.yaml")


def test_example_in_docs_is_valid() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    p = parse_policy(example, "docs/policy.md").policy
    assert p.boundary_for("jml-provisioning").inputs_for("disable_account") == {"termination_date",
                                                                               "employment_status"}


def test_privileged_name_remembered_answers_are_the_ones_it_computes() -> None:
    """``privileged_name`` remembers its answers per (resource_id, entitlement) as spelt: asked twice, in any
    order, past the memo's bound, or with a value that is no name, it answers as the names compare."""
    import random

    from pipeline.scoring import policy as policy_module

    p = load_policy(None).policy
    rnd = random.Random(3)
    names = ["x", "global-admin", " GLOBAL-ADMIN\u200b", "ROLE/globaladmin", "role/GlobalAdmins", "wiki",
             "Global-Admin", *p.privileged.entitlements, *p.privileged.groups]
    asked = [(rnd.choice(names), rnd.choice([None, *names])) for _ in range(2_000)]
    want = [p._privileged_name(r, e) for r, e in asked]
    assert [p.privileged_name(r, e) for r, e in asked] == want == [p.privileged_name(r, e) for r, e in asked]
    assert any(want) and not all(want)
    memo = p._c.privileged_memo
    memo.clear()
    bound = policy_module.PRIVILEGED_MEMO_MAX
    try:
        policy_module.PRIVILEGED_MEMO_MAX = 3
        assert [p.privileged_name(r, e) for r, e in asked] == want and len(memo) <= 3
    finally:
        policy_module.PRIVILEGED_MEMO_MAX = bound
    with pytest.raises(AttributeError):
        p.privileged_name([], None)  # type: ignore[arg-type]
