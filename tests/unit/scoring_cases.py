"""The rule tables: one row per case, positives and their benign look-alikes, for the per-event rules,
drift against a baseline, and escalation chains. The rule tests run them; the catalogue test checks that
every code is raised by some positive row. A new rule adds its rows here (docs/rules.md, "Adding a rule").

Rows name changes from the benign base event (:data:`pipeline.drafts.BASE`) by dotted path.
"""

from __future__ import annotations

from typing import Any

from tests.unit.scoring_factory import AGENT, PRINCIPAL, T0

# -- per-event rules (tests/unit/test_scoring_rules.py): (id, changes, code, fires) ----------------------
HR = [{"name": "department", "source": "hris"}, {"name": "job_code", "source": "hris"}]

RULE_CASES: list[tuple[str, dict[str, Any], str, bool]] = [
    # AG-AUTH-001 privileged grant without human approval
    ("tier3-unapproved", {"action": "assign_role", "resource.resource_id": "role/X", "resource.privilege_tier": 3},
     "AG-AUTH-001", True),
    ("tier2-unapproved", {"action": "assign_role", "resource.privilege_tier": 2}, "AG-AUTH-001", True),
    ("listed-privileged-at-tier1", {"action": "grant_entitlement", "resource.entitlement": "aws-admin",
                                    "resource.system": "aws"}, "AG-AUTH-001", True),
    ("privileged-group-at-tier1", {"resource.resource_id": "grp-domain-admins"}, "AG-AUTH-001", True),
    # ...whatever the case and padding of the name (docs/policy.md "Names")
    ("listed-privileged-case-variant", {"action": "grant_entitlement", "resource.entitlement": "AWS-Admin",
                                        "resource.system": "aws"}, "AG-AUTH-001", True),
    ("listed-privileged-padded", {"action": "grant_entitlement", "resource.entitlement": "aws-admin \u200b",
                                  "resource.system": "aws"}, "AG-AUTH-001", True),
    ("privileged-group-case-variant", {"action": "assign_role", "resource.resource_id": "role/globaladmin"},
     "AG-AUTH-001", True),
    ("benign:privileged-name-look-alike", {"action": "grant_entitlement", "resource.entitlement": "aws-admins",
                                           "resource.system": "aws"}, "AG-AUTH-001", False),
    ("benign:approved-privileged", {"action": "assign_role", "resource.privilege_tier": 3,
                                    "decision.approved_by": "mgr-eng"}, "AG-AUTH-001", False),
    ("benign:tier1", {}, "AG-AUTH-001", False),
    # ...an approved_by that names nobody, or names the agent, its principal or the target, is no approval
    *((f"tier3-approved-by-{label}", {"action": "assign_role", "resource.privilege_tier": 3,
                                      "decision.approved_by": who}, "AG-AUTH-001", True)
      for label, who in (("space", " "), ("nbsp", "\u00a0"), ("zero-width-space", "\u200b"),
                         ("bom-and-space", "\ufeff \u2060"), ("hangul-filler", "\u3164"),
                         ("the-agent", AGENT), ("the-agent-case-variant", f" {AGENT.upper()} "),
                         ("the-principal", PRINCIPAL), ("the-target", "u000001"),
                         # ...in compatibility forms too (full-width letters): one identity to every key and rule
                         ("the-agent-full-width", "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in AGENT)),
                         ("the-principal-full-width",
                          "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c for c in PRINCIPAL)))),
    ("tier3-approved-by-the-target-decomposed", {"action": "assign_role", "resource.privilege_tier": 3,
                                                 "target.identity_id": "jos\u00e9.garcia",
                                                 "decision.approved_by": "jose\u0301.garcia"}, "AG-AUTH-001", True),
    ("benign:approved-by-human-named-with-spaces", {"action": "assign_role", "resource.privilege_tier": 3,
                                                    "decision.approved_by": "Jane Doe"}, "AG-AUTH-001", False),
    ("benign:denied-privileged", {"resource.privilege_tier": 3, "decision.outcome": "denied"}, "AG-AUTH-001", False),
    ("benign:revoke-privileged", {"action": "remove_role", "resource.privilege_tier": 3}, "AG-AUTH-001", False),
    ("auth-gateway-tier2-no-approval-tier", {"workflow_id": "auth-gateway", "action": "allow_auth",
                                             "resource.system": "okta", "resource.privilege_tier": 2,
                                             "trigger.kind": "signal",
                                             "inputs_used": [{"name": "risk_score", "source": "idp"}]},
     "AG-AUTH-001", False),
    # AG-AUTH-002 model final authority
    ("model-authority", {"decision.authority": "model"}, "AG-AUTH-002", True),
    ("benign:model-recommended-only", {"decision.recommended_by": "model"}, "AG-AUTH-002", False),
    ("benign:model-authority-denied", {"decision.authority": "model", "decision.outcome": "denied"},
     "AG-AUTH-002", False),
    ("benign:model-authority-recommend", {"decision.authority": "model", "action": "recommend",
                                          "decision.outcome": "recommended"}, "AG-AUTH-002", False),
    # AG-AUTH-003 self-grant
    ("self-grant-agent", {"target.identity_id": AGENT, "target.identity_type": "agent"}, "AG-AUTH-003", True),
    ("self-grant-principal", {"target.identity_id": PRINCIPAL, "target.identity_type": "service"},
     "AG-AUTH-003", True),
    ("self-grant-agent-in-capitals", {"target.identity_id": AGENT.upper(), "target.identity_type": "agent"},
     "AG-AUTH-003", True),
    ("self-grant-principal-in-capitals", {"target.identity_id": PRINCIPAL.upper(), "target.identity_type": "service"},
     "AG-AUTH-003", True),
    ("benign:revoke-from-self", {"target.identity_id": AGENT, "action": "remove_group_member"}, "AG-AUTH-003", False),
    ("benign:grant-to-other-service", {"target.identity_id": "svc-other", "target.identity_type": "service"},
     "AG-AUTH-003", False),
    ("benign:no-principal", {"agent.on_behalf_of": None}, "AG-AUTH-003", False),
    # AG-BND-001 input outside allowlist
    ("input-outside", {"inputs_used": [*HR, {"name": "credit_score", "source": "model"}]}, "AG-BND-001", True),
    ("input-outside-for-action", {"action": "create_account", "resource.privilege_tier": 0,
                                  "inputs_used": [{"name": "termination_date", "source": "hris"}]},
     "AG-BND-001", True),
    ("benign:per-action-allowlist", {"action": "disable_account", "trigger.kind": "leaver",
                                     "target.lifecycle_state": "terminated",
                                     "inputs_used": [{"name": "termination_date", "source": "hris"}]},
     "AG-BND-001", False),
    ("benign:no-inputs", {"inputs_used": []}, "AG-BND-001", False),
    # AG-BND-002 too many signals
    ("nine-signals", {"inputs_used": [{"name": "department", "source": f"s{i}"} for i in range(9)]},
     "AG-BND-002", True),
    ("benign:eight-signals", {"inputs_used": [{"name": "department", "source": f"s{i}"} for i in range(8)]},
     "AG-BND-002", False),
    ("benign:one-signal-repeated-nine-times", {"inputs_used": [{"name": "department", "source": "hris"}] * 9},
     "AG-BND-002", False),
    ("nine-distinct-among-repeats", {"inputs_used": [{"name": f"a{i % 9}", "source": "hris"} for i in range(20)]},
     "AG-BND-002", True),
    # AG-BND-003 action outside boundary
    ("modify-policy-in-jml", {"action": "modify_policy"}, "AG-BND-003", True),
    ("unknown-workflow-grants", {"workflow_id": "shadow-flow"}, "AG-BND-003", True),
    ("benign:unknown-workflow-recommends", {"workflow_id": "shadow-flow", "action": "recommend",
                                            "decision.outcome": "recommended"}, "AG-BND-003", False),
    # AG-BND-004 system outside boundary
    ("payroll-in-jml", {"resource.system": "payroll-prod"}, "AG-BND-004", True),
    ("benign:aws-in-jml", {"resource.system": "aws"}, "AG-BND-004", False),
    ("benign:unknown-workflow-any-system", {"workflow_id": "shadow-flow", "action": "recommend",
                                            "resource.system": "anything"}, "AG-BND-004", False),
    # AG-BND-005 agent not bound to the workflow it names (jml-provisioning: agents [agent-jml-*])
    ("agent-of-another-workflow", {"agent.agent_id": "agent-access-07"}, "AG-BND-005", True),
    ("agent-pattern-is-not-a-substring", {"agent.agent_id": "xagent-jml-01"}, "AG-BND-005", True),
    ("agent-unbound-in-auth-gateway", {"workflow_id": "auth-gateway", "action": "allow_auth", "trigger.kind": "signal",
                                       "resource.system": "okta", "resource.privilege_tier": 0,
                                       "agent.agent_id": "agent-jml-01",
                                       "inputs_used": [{"name": "risk_score", "source": "idp"}]}, "AG-BND-005", True),
    ("benign:bound-agent", {"agent.agent_id": "agent-jml-04"}, "AG-BND-005", False),
    ("benign:bound-agent-case-variant", {"agent.agent_id": "Agent-JML-04"}, "AG-BND-005", False),
    ("benign:bound-agent-full-width", {"agent.agent_id": "".join(chr(ord(c) + 0xFEE0) if c.isalnum() else c
                                                                 for c in "agent-jml-04")}, "AG-BND-005", False),
    ("benign:workflow-without-agents", {"workflow_id": "shadow-flow", "action": "recommend",
                                        "decision.outcome": "recommended", "agent.agent_id": "agent-access-07"},
     "AG-BND-005", False),
    # AG-POL-001 stale or unapproved policy version
    ("stale-version", {"policy.policy_version": "2"}, "AG-POL-001", True),
    ("unknown-policy-id", {"policy.policy_id": "shadow-policy"}, "AG-POL-001", True),
    ("benign:previous-approved-version", {"policy.policy_version": "6"}, "AG-POL-001", False),
    # AG-LCM-001 grant to terminated / pre-hire identity
    ("grant-to-terminated", {"target.lifecycle_state": "terminated", "trigger.kind": "mover"}, "AG-LCM-001", True),
    ("group-to-pre-hire", {"target.lifecycle_state": "pre_hire"}, "AG-LCM-001", True),
    ("benign:account-for-pre-hire", {"target.lifecycle_state": "pre_hire", "action": "create_account",
                                     "resource.privilege_tier": 0}, "AG-LCM-001", False),
    ("benign:revoke-from-terminated", {"target.lifecycle_state": "terminated", "action": "revoke_entitlement",
                                       "trigger.kind": "leaver"}, "AG-LCM-001", False),
    ("benign:on-leave", {"target.lifecycle_state": "on_leave"}, "AG-LCM-001", False),
    # AG-LCM-002 trigger kind does not allow the action
    ("leaver-grants", {"trigger.kind": "leaver"}, "AG-LCM-002", True),
    ("scheduled-grants", {"trigger.kind": "scheduled"}, "AG-LCM-002", True),
    ("benign:leaver-revokes", {"trigger.kind": "leaver", "action": "remove_group_member"}, "AG-LCM-002", False),
    ("benign:unlisted-kind", {"trigger.kind": "manual"}, "AG-LCM-002", False),
    # AG-LCM-003 access change not tied to a lifecycle or request trigger
    ("manual-trigger", {"trigger.kind": "manual"}, "AG-LCM-003", True),
    ("joiner-without-ref", {"trigger.ref": None}, "AG-LCM-003", True),
    ("joiner-blank-ref", {"trigger.ref": " "}, "AG-LCM-003", True),
    ("joiner-invisible-ref", {"trigger.ref": "\u200b\u00a0"}, "AG-LCM-003", True),
    ("signal-in-jml", {"trigger.kind": "signal"}, "AG-LCM-003", True),
    ("benign:signal-in-auth-gateway", {"workflow_id": "auth-gateway", "action": "allow_auth", "trigger.kind": "signal",
                                       "resource.system": "okta", "resource.privilege_tier": 0,
                                       "inputs_used": [{"name": "risk_score", "source": "idp"}]},
     "AG-LCM-003", False),
    ("benign:manual-recommend", {"trigger.kind": "manual", "action": "recommend",
                                 "decision.outcome": "recommended"}, "AG-LCM-003", False),
    ("benign:manual-denied", {"trigger.kind": "manual", "decision.outcome": "denied"}, "AG-LCM-003", False),
]


# -- AG-SOD-001: (id, earlier steps, the completing step, fires) -------------------------------------
SOD = {"workflow_id": "access-request", "trigger.kind": "access_request", "trigger.ref": "REQ-9",
       "action": "grant_entitlement", "resource.system": "sap", "resource.resource_id": "sap-fi"}

SOD_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], bool]] = [
    ("pair-completed", [{"resource.entitlement": "ap-create-vendor"}], {"resource.entitlement": "ap-approve-payment"},
     True),
    ("pair-completed-other-order", [{"resource.entitlement": "ap-approve-payment"}],
     {"resource.entitlement": "ap-create-vendor"}, True),
    ("pair-completed-case-variant", [{"resource.entitlement": "ap-create-vendor"}],
     {"resource.entitlement": "AP-Approve-Payment"}, True),
    ("pair-completed-held-half-padded", [{"resource.entitlement": " AP-CREATE-VENDOR"}],
     {"resource.entitlement": "ap-approve-payment"}, True),
    ("benign:pair-already-held-in-another-case", [{"resource.entitlement": "ap-create-vendor"},
                                                  {"resource.entitlement": "AP-approve-payment"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:first-half-revoked", [{"resource.entitlement": "ap-create-vendor"},
                                   {"resource.entitlement": "ap-create-vendor", "action": "revoke_entitlement"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:first-half-denied", [{"resource.entitlement": "ap-create-vendor", "decision.outcome": "denied"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:unrelated-entitlements", [{"resource.entitlement": "ap-create-vendor"}],
     {"resource.entitlement": "gl-post-journal"}, False),
    ("benign:halves-on-different-identities", [{"resource.entitlement": "ap-create-vendor",
                                                "target.identity_id": "u-other"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:pair-already-held", [{"resource.entitlement": "ap-create-vendor"},
                                  {"resource.entitlement": "ap-approve-payment"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    # a pair's name is an entitlement or a resource id: both names of a grant count, the new one's and the held
    ("pair-completed-half-named-by-its-resource", [{"resource.entitlement": "ap-create-vendor"}],
     {"resource.resource_id": "ap-approve-payment", "resource.entitlement": "AP Payment Approver"}, True),
    ("pair-completed-held-half-named-by-its-resource",
     [{"resource.resource_id": "AP-Create-Vendor", "resource.entitlement": "Vendor Creator"}],
     {"resource.entitlement": "ap-approve-payment"}, True),
    ("benign:held-half-revoked-by-its-resource-id",
     [{"resource.resource_id": "ap-create-vendor", "resource.entitlement": "Vendor Creator"},
      {"resource.resource_id": "ap-create-vendor", "resource.entitlement": None, "action": "revoke_entitlement"}],
     {"resource.entitlement": "ap-approve-payment"}, False),
    ("benign:label-on-a-resource-of-a-similar-name", [{"resource.entitlement": "ap-create-vendor"}],
     {"resource.resource_id": "ap-approve-payment-report", "resource.entitlement": "AP Payment Approver"}, False),
    ("benign:another-entitlement-of-the-pairs-resource", [{"resource.entitlement": "ap-create-vendor"}],
     {"resource.resource_id": "sap-fi", "resource.entitlement": "gl-post-journal"}, False),
]


# -- drift (tests/unit/test_scoring_drift.py): (id, changes, baseline overrides, code, fires) ------------
DRIFT_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str, bool]] = [
    # (id, event changes, baseline overrides, code, fires)
    ("new-action", {"action": "remove_group_member"}, {}, "AG-DRF-001", True),
    ("benign:known-action", {}, {}, "AG-DRF-001", False),
    ("benign:warm-up", {"action": "remove_group_member"}, {"events": 199}, "AG-DRF-001", False),
    ("new-system", {"resource.system": "aws"}, {}, "AG-DRF-002", True),
    ("benign:known-system", {"resource.system": "salesforce"}, {}, "AG-DRF-002", False),
    ("benign:warm-up-system", {"resource.system": "aws"}, {"events": 10}, "AG-DRF-002", False),
    ("new-entitlement", {"action": "grant_entitlement", "resource.entitlement": "finance-standard"}, {},
     "AG-DRF-003", True),
    ("higher-tier", {"action": "assign_role", "resource.privilege_tier": 3, "decision.approved_by": "mgr"}, {},
     "AG-DRF-003", True),
    ("benign:known-entitlement", {"action": "grant_entitlement", "resource.entitlement": "sales-standard"}, {},
     "AG-DRF-003", False),
    ("benign:new-entitlement-denied", {"action": "grant_entitlement", "resource.entitlement": "x",
                                       "decision.outcome": "denied"}, {}, "AG-DRF-003", False),
    ("new-input", {"inputs_used": [{"name": "location", "source": "hris"}]}, {}, "AG-DRF-004", True),
    ("benign:known-inputs", {}, {}, "AG-DRF-004", False),
]


# -- escalation chains (tests/unit/test_scoring_escalation.py) -------------------------------------------
ROGUE = "agent-jml-03"
HUMAN: dict[str, Any] = {"decision.authority": "human", "decision.approved_by": "ciso"}
MGR: dict[str, Any] = {"decision.approved_by": "mgr-eng"}  # approved step, policy-engine authority


def group_chain(member: str = PRINCIPAL, grant: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {"action": "create_group", "target.identity_id": "grp-tmp", "target.identity_type": "service",
         "resource.resource_id": "grp-tmp", "resource.privilege_tier": 0},
        {"action": "add_group_member", "target.identity_id": member, "target.identity_type": "service",
         "resource.resource_id": "grp-tmp", "agent.on_behalf_of": None},
        {"action": "assign_role", "target.identity_id": "grp-tmp", "target.identity_type": "service",
         "resource.resource_id": "role/GlobalAdmin", "resource.privilege_tier": 3, **MGR, **(grant or {})},
    ]


BREAK_GLASS: dict[str, Any] = {"action": "assign_role", "trigger.kind": "mover", "resource.system": "aws",
                               "resource.resource_id": "role/BreakGlass", "resource.privilege_tier": 3}


def tier_chain(*tiers: int, last: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    steps = [{"action": "assign_role", "trigger.kind": "mover", "resource.system": "aws",
              "resource.resource_id": f"role/Step{t}", "resource.privilege_tier": t, **(MGR if t >= 2 else {})}
             for t in tiers]
    steps[-1].update(last or {})
    return steps


TRANSIENT = {"trigger.kind": "mover", "resource.system": "aws", "resource.resource_id": "role/Admin",
             "resource.entitlement": "aws-admin", "resource.privilege_tier": 3}


def transient_chain(revoke_after_ms: int, grant: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [{"action": "grant_entitlement", **TRANSIENT, **MGR, **(grant or {})},
            {"action": "revoke_entitlement", **TRANSIENT, "occurred_at": T0 + revoke_after_ms}]


ACCOUNT_END = {"trigger.kind": "leaver", "resource.system": "aws", "resource.resource_id": "user-account",
               "resource.entitlement": None, "resource.privilege_tier": 0}


def account_end_chain(action: str, after_ms: int, grant: dict[str, Any] | None = None,
                      end: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A privileged grant, then the account on its system disabled or deleted: the end of every grant there."""
    return [{"action": "grant_entitlement", **TRANSIENT, **MGR, **(grant or {})},
            {"action": action, **ACCOUNT_END, "occurred_at": T0 + after_ms, **(end or {})}]


DELEG = {"workflow_id": "access-request", "trigger.kind": "access_request", "trigger.ref": "REQ-1",
         "action": "grant_entitlement", "resource.system": "github", "resource.resource_id": "org-acme"}


def delegation_chain(final_target: str = "agent-access-02",
                     final: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [
        {**DELEG, "agent.agent_id": "agent-access-01", "agent.on_behalf_of": None, "target.identity_id":
         "agent-access-02", "target.identity_type": "agent", "resource.entitlement": "delegate"},
        {**DELEG, "agent.agent_id": "agent-access-02", "agent.on_behalf_of": "agent-access-01",
         "target.identity_id": final_target, "target.identity_type": "agent" if final_target.startswith("agent")
         else "human", "resource.entitlement": "org-owner", "resource.privilege_tier": 3, **MGR, **(final or {})},
    ]


ESC_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str, int | None]] = [
    # (id, steps, common changes, code, index of the completing step or None)
    ("group-nesting", group_chain(), {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
    ("group-nesting-agent-itself", group_chain(member=ROGUE), {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
    ("group-nesting-grant-before-add", [group_chain()[0], group_chain()[2], group_chain()[1]],
     {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
    ("benign:group-used-legitimately", group_chain(member="u000042"), {}, "AG-ESC-001", None),
    ("benign:group-gets-low-privilege", group_chain(grant={"resource.resource_id": "role/Reader",
                                                           "resource.privilege_tier": 1}), {}, "AG-ESC-001", None),
    ("benign:group-grant-human-decided", group_chain(grant=HUMAN), {"agent.agent_id": ROGUE}, "AG-ESC-001", None),
    # a group is an identity: the directory matches it without case, so must the chain
    ("group-nesting-group-spelt-otherwise",
     [group_chain()[0], {**group_chain()[1], "resource.resource_id": "GRP-TMP"},
      {**group_chain()[2], "target.identity_id": "Grp-Tmp"}], {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
    ("benign:group-of-a-similar-name",
     [group_chain()[0], {**group_chain()[1], "resource.resource_id": "grp-tmp-2"}, group_chain()[2]],
     {"agent.agent_id": ROGUE}, "AG-ESC-001", None),
    ("tier-stepping", tier_chain(1, 2, 3), {}, "AG-ESC-002", 2),
    ("tier-stepping-from-zero", tier_chain(0, 1, 3), {}, "AG-ESC-002", 2),
    ("benign:tier-increase-human-decided", tier_chain(1, 2, 3, last=HUMAN), {}, "AG-ESC-002", None),
    ("benign:single-jump", tier_chain(1, 3), {}, "AG-ESC-002", None),
    ("benign:stops-at-tier-2", tier_chain(0, 1, 2), {}, "AG-ESC-002", None),
    # an earlier privileged grant hides a climb only when it completed an unapproved climb itself (reported)
    ("tier-stepping-after-human-jit-revoked", [{**BREAK_GLASS, **HUMAN}, {**BREAK_GLASS, "action": "remove_role"},
                                               *tier_chain(1, 2, 3)], {}, "AG-ESC-002", 4),
    ("tier-stepping-after-human-jit-held", [{**BREAK_GLASS, **HUMAN}, *tier_chain(1, 2, 3)], {}, "AG-ESC-002", 3),
    ("tier-stepping-after-lone-unapproved-top", [BREAK_GLASS, *tier_chain(1, 2, 3)], {}, "AG-ESC-002", 3),
    ("benign:repeat-top-after-a-climb", tier_chain(1, 2, 3, 3), {}, "AG-ESC-002", 2),
    ("benign:human-approved-step-is-no-step", [*tier_chain(1), {**tier_chain(2)[0], **HUMAN}, *tier_chain(3)], {},
     "AG-ESC-002", None),
    ("transient-privilege", transient_chain(60_000), {}, "AG-ESC-003", 1),
    ("benign:revoke-long-after-grant", transient_chain(2 * 3_600_000 - 1), {}, "AG-ESC-003", None),
    ("benign:revoke-after-transient-window", transient_chain(901_000), {}, "AG-ESC-003", None),
    ("benign:jit-grant-human-decided", transient_chain(60_000, grant=HUMAN), {}, "AG-ESC-003", None),
    # the target compares names case-insensitively: a revoke spelled otherwise still ends the grant
    ("transient-privilege-revoke-spelled-otherwise",
     [transient_chain(60_000)[0], {**transient_chain(60_000)[1], "resource.entitlement": " AWS-Admin"}], {},
     "AG-ESC-003", 1),
    # a revoke ends the grant when it names the same access by either name: the role by its resource id alone
    ("transient-privilege-revoke-names-the-role-only",
     [transient_chain(60_000)[0], {**transient_chain(60_000)[1], "resource.entitlement": None}], {}, "AG-ESC-003", 1),
    ("transient-privilege-grant-named-the-role-only",
     [{**transient_chain(60_000)[0], "resource.entitlement": None}, transient_chain(60_000)[1]], {}, "AG-ESC-003", 1),
    ("transient-privilege-revoke-on-the-system-spelt-otherwise",
     [transient_chain(60_000)[0], {**transient_chain(60_000)[1], "resource.system": "AWS"}], {}, "AG-ESC-003", 1),
    ("benign:revoke-of-another-role-on-the-system",
     [transient_chain(60_000)[0], {**transient_chain(60_000)[1], "resource.resource_id": "role/Reader",
                                   "resource.entitlement": None, "resource.privilege_tier": 1}], {}, "AG-ESC-003",
     None),
    ("benign:revoke-of-another-entitlement-of-the-resource",
     [transient_chain(60_000)[0], {**transient_chain(60_000)[1], "resource.entitlement": "s3-read",
                                   "resource.privilege_tier": 1}], {}, "AG-ESC-003", None),
    # disabling or deleting the account ends every grant on its system, whatever the account is named
    ("transient-privilege-ended-by-delete-account", account_end_chain("delete_account", 60_000), {}, "AG-ESC-003", 1),
    ("transient-privilege-ended-by-disable-account", account_end_chain("disable_account", 60_000), {}, "AG-ESC-003",
     1),
    ("benign:account-deleted-long-after-grant", account_end_chain("delete_account", 2 * 3_600_000 - 1), {},
     "AG-ESC-003", None),
    ("benign:account-disabled-after-transient-window", account_end_chain("disable_account", 901_000), {},
     "AG-ESC-003", None),
    ("benign:account-deleted-after-human-decided-grant", account_end_chain("delete_account", 60_000, grant=HUMAN), {},
     "AG-ESC-003", None),
    ("benign:account-deleted-on-another-system",
     account_end_chain("delete_account", 60_000, end={"resource.system": "entra-id"}), {}, "AG-ESC-003", None),
    ("benign:account-disabled-after-a-low-grant",
     account_end_chain("disable_account", 60_000, grant={"resource.resource_id": "acct",
                                                         "resource.entitlement": "s3-read",
                                                         "resource.privilege_tier": 1}), {}, "AG-ESC-003", None),
    ("transient-privilege-revoked-then-account-deleted-reported-once",
     [*transient_chain(60_000), account_end_chain("delete_account", 120_000)[1]], {}, "AG-ESC-003", 1),
    ("delegation-self-grant", delegation_chain(), {}, "AG-ESC-004", 1),
    ("delegation-grant-to-delegator", delegation_chain("agent-access-01"), {}, "AG-ESC-004", 1),
    ("benign:delegation-to-a-user", delegation_chain("u000077"), {}, "AG-ESC-004", None),
    ("benign:delegated-self-grant-human-decided", delegation_chain(final=HUMAN), {}, "AG-ESC-004", None),
    # "human authority" needs a human named, and not one of the parties: blank or self approval is none
    *((f"{pattern}-human-{label}", steps, common, code, done)
      for label, who in (("blank", " "), ("zero-width", "\u200b"), ("self", "SELF"))
      for pattern, steps, common, code, done in (
          ("group-nesting", group_chain(grant={**HUMAN, "decision.approved_by": ROGUE if who == "SELF" else who}),
           {"agent.agent_id": ROGUE}, "AG-ESC-001", 2),
          ("tier-stepping", tier_chain(1, 2, 3, last={**HUMAN, "decision.approved_by": AGENT if who == "SELF"
                                                      else who}), {}, "AG-ESC-002", 2),
          ("transient", transient_chain(60_000, grant={**HUMAN, "decision.approved_by": "u000001" if who == "SELF"
                                                       else who}), {}, "AG-ESC-003", 1),
          ("delegation", delegation_chain(final={**HUMAN, "decision.approved_by": "agent-access-01"
                                                  if who == "SELF" else who}), {}, "AG-ESC-004", 1))),
]
