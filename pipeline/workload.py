"""A realistic synthetic workload: joiner/mover/leaver provisioning, access requests and auth decisions
by several agents, with planted violations. Used by ``agentgov demo``, the benchmarks and the tests.

Every run carries ``attributes["demo.scenario"]``; benign runs are ``"benign"``. ``PLANTED`` says which
finding code each planted scenario must raise, so a summary can show what was caught.

Example::

    for op in Workload(seed=7).ops(events=10_000):
        op.publish(publisher)
"""

from __future__ import annotations

import random
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .drafts import draft
from .publisher import TransitionPublisher

POLICY_ID = "iga-access-policy"
POLICY_VERSION = "7"  # an approved version in policies/default.yaml
DEPARTMENTS = ("sales", "finance", "engineering", "support", "hr", "legal")
HR_INPUTS = ({"name": "department", "source": "hris"}, {"name": "job_code", "source": "hris"},
             {"name": "manager", "source": "hris"})
JML_AGENTS = tuple(f"agent-jml-{i:02d}" for i in range(1, 5))
REQ_AGENTS = ("agent-access-01", "agent-access-02")
AUTH_AGENTS = ("agent-auth-01",)
SERVICE_PRINCIPAL = "svc-iga-automation"

# scenario -> finding code it must raise
PLANTED: dict[str, str] = {
    "self_grant": "AG-AUTH-003",
    "model_final_authority": "AG-AUTH-002",
    "unapproved_privileged_grant": "AG-AUTH-001",
    "missing_evidence": "AG-EVD-001",
    "input_outside_allowlist": "AG-BND-001",
    "system_outside_boundary": "AG-BND-004",
    "stale_policy_version": "AG-POL-001",
    "grant_to_terminated": "AG-LCM-001",
    "sod_toxic_pair": "AG-SOD-001",
    "tampered_event": "AG-EVD-002",
    "missing_step": "AG-EVD-003",
    "duplicate_event_id": "AG-EVD-005",
    "esc_group_nesting": "AG-ESC-001",
    "esc_tier_stepping": "AG-ESC-002",
    "esc_transient_privilege": "AG-ESC-003",
    "esc_delegation_self_grant": "AG-ESC-004",
}
# cross-run scenario -> finding code the correlator must raise (``Workload(cross_run=True)``). Their runs
# hash to different partitions of a 6-partition topic, so no single scorer sees the chain.
PLANTED_CROSS_RUN: dict[str, str] = {
    "xrun_tier_stepping": "AG-XRN-001",
    "xrun_transient_privilege": "AG-XRN-002",
    "xrun_delegation_laundering": "AG-XRN-003",
    "xrun_group_laundering": "AG-XRN-003",
    "xrun_sod_against_holdings": "AG-XRN-005",
    "xrun_duplicate_event_id": "AG-XRN-006",
    "xrun_grant_to_leaver": "AG-XRN-007",
    "xrun_group_nesting": "AG-XRN-008",
}
# bad input -> DLQ reason it must produce
BAD_INPUTS: dict[str, str] = {
    "garbage_bytes": "bad_magic",
    "unknown_fingerprint": "unknown_schema",
    "truncated_avro": "truncated",
    "tier_out_of_range": "invalid_value",
    # poison: before pipeline/limits.py, each of these stopped a partition for good
    "step_int32_overflow": "invalid_value",
    "oversized_event": "oversized",
}


@dataclass
class Op:
    """One thing to publish: a draft through the SDK, a completed record (possibly tampered), or raw bytes."""

    kind: str  # "draft" | "record" | "raw"
    scenario: str
    payload: Any
    key: bytes = b""
    mutate: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # applied after the SDK completed it
    send: str = "send"  # for "record": "send", "skip" (chain advances, nothing sent), "truncate", or "raw"
    # ("raw": encoded and produced as is, past the SDK's limits, as a client without the SDK could)

    def publish(self, pub: TransitionPublisher) -> None:
        if self.kind == "draft":
            pub.publish(self.payload)
        elif self.kind == "record":
            record = pub.complete(self.payload)
            if self.mutate is not None:
                record = self.mutate(record)
            if self.send == "truncate":
                pub.producer.produce(pub.topic, pub.serde.encode(record)[:-7], key=record["run_id"].encode())
            elif self.send == "send":
                pub.send(record)
            elif self.send == "raw":
                pub.producer.produce(pub.topic, pub.serde.encode(record), key=record["run_id"].encode())
        else:
            pub.producer.produce(pub.topic, self.payload, key=self.key or None)


def run_step(run: str, step: int, agent: str, workflow: str, trigger: tuple[str, str | None], action: str,
             target: str, system: str, resource: str, tier: int, /, **changes: Any) -> dict[str, Any]:
    """One step of a workload run: :func:`pipeline.drafts.draft` with the run's and the step's fields, the
    workload's inputs (HR), states ``s<step>`` -> ``s<step+1>``, the ``benign`` scenario and a fresh decision
    id; ``changes`` are builder paths (``resource__entitlement=...``). A model id is set when a model
    recommended or decided, an approval reference when someone approved."""
    d = draft({"workflow_id": workflow, "run_id": run, "step": step, "from_state": f"s{step}",
               "to_state": f"s{step + 1}", "agent.agent_id": agent, "agent.on_behalf_of": SERVICE_PRINCIPAL,
               "trigger.kind": trigger[0], "trigger.ref": trigger[1], "action": action,
               "target.identity_id": target, "resource.system": system, "resource.resource_id": resource,
               "resource.privilege_tier": tier, "inputs_used": list(HR_INPUTS),
               "policy.policy_id": POLICY_ID, "policy.policy_version": POLICY_VERSION,
               "policy.decision_id": f"dec-{uuid.uuid4()}", "attributes": {"demo.scenario": "benign"}}, **changes)
    decision = d["decision"]
    by_model = "model" in (decision["recommended_by"], decision["authority"])
    d["agent"]["model_id"] = "gpt-iam-2026-10" if by_model else None
    ref = zlib.crc32(f"{run}#{step}".encode()) % 10**6  # stable across processes, unlike hash()
    decision["approval_ref"] = f"APR-{ref}" if decision["approved_by"] else None
    return d


@dataclass
class Workload:
    seed: int = 7
    planted: bool = True
    bad_inputs: bool = True
    cross_run: bool = False
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- benign runs --------------------------------------------------------------------------
    def _joiner(self, n: int) -> list[dict[str, Any]]:
        r, user, dept = f"run-joiner-{n}", f"u{n:06d}", self.rng.choice(DEPARTMENTS)
        agent, trig = self.rng.choice(JML_AGENTS), ("joiner", f"HR-{100000 + n}")
        return [
            run_step(r, 0, agent, "jml-provisioning", trig, "create_account", user, "entra-id", "user-account", 0),
            run_step(r, 1, agent, "jml-provisioning", trig, "add_group_member", user, "entra-id", f"grp-{dept}", 1),
            run_step(r, 2, agent, "jml-provisioning", trig, "grant_entitlement", user, "salesforce", "sf-profile", 1,
                     resource__entitlement=f"{dept}-standard"),
            run_step(r, 3, agent, "jml-provisioning", trig, "assign_role", user, "aws", "role/ReadOnly", 2,
                     decision__approved_by=f"mgr-{dept}"),
        ]

    def _mover(self, n: int) -> list[dict[str, Any]]:
        r, user = f"run-mover-{n}", f"u{n:06d}"
        old, new = self.rng.sample(DEPARTMENTS, 2)
        agent, trig = self.rng.choice(JML_AGENTS), ("mover", f"HR-{200000 + n}")
        return [
            run_step(r, 0, agent, "jml-provisioning", trig, "remove_group_member", user, "entra-id", f"grp-{old}", 1),
            run_step(r, 1, agent, "jml-provisioning", trig, "add_group_member", user, "entra-id", f"grp-{new}", 1),
            run_step(r, 2, agent, "jml-provisioning", trig, "grant_entitlement", user, "salesforce", "sf-profile", 1,
                     resource__entitlement=f"{new}-standard"),
        ]

    def _leaver(self, n: int) -> list[dict[str, Any]]:
        r, user = f"run-leaver-{n}", f"u{n:06d}"
        agent, trig = self.rng.choice(JML_AGENTS), ("leaver", f"HR-{300000 + n}")
        gone = "terminated"
        return [
            run_step(r, 0, agent, "jml-provisioning", trig, "disable_account", user, "entra-id", "user-account", 0,
                     target__lifecycle_state=gone),
            run_step(r, 1, agent, "jml-provisioning", trig, "revoke_entitlement", user, "salesforce", "sf-profile", 1,
                     resource__entitlement="sales-standard", target__lifecycle_state=gone),
            run_step(r, 2, agent, "jml-provisioning", trig, "remove_role", user, "aws", "role/ReadOnly", 2,
                     target__lifecycle_state=gone),
        ]

    def _request(self, n: int) -> list[dict[str, Any]]:
        r, user = f"run-request-{n}", f"u{n:06d}"
        agent, trig = self.rng.choice(REQ_AGENTS), ("access_request", f"REQ-{n}")
        return [
            run_step(r, 0, agent, "access-request", trig, "recommend", user, "github", "org-acme", 2,
                     resource__entitlement="repo-maintain", decision__outcome="recommended"),
            run_step(r, 1, agent, "access-request", trig, "grant_entitlement", user, "github", "org-acme", 2,
                     resource__entitlement="repo-maintain", decision__approved_by="approver-7",
                     decision__authority="human"),
        ]

    def _auth(self, n: int) -> list[dict[str, Any]]:
        r, user = f"run-auth-{n}", f"u{n:06d}"
        signal_inputs = ({"name": "risk_score", "source": "idp"}, {"name": "device_trust", "source": "mdm"})
        action = self.rng.choice(("allow_auth", "allow_auth", "step_up_auth", "deny_auth"))
        outcome = "denied" if action == "deny_auth" else "granted"
        return [run_step(r, 0, AUTH_AGENTS[0], "auth-gateway", ("signal", f"SIG-{n}"), action, user, "okta",
                         "app-portal", 0, decision__outcome=outcome, inputs_used=list(signal_inputs),
                         decision__recommended_by="rule")]

    # -- planted violations --------------------------------------------------------------------
    def _planted(self) -> list[Op]:
        ops: list[Op] = []
        jml, trig = "jml-provisioning", ("joiner", "HR-999001")

        def run(scenario: str, drafts: list[dict[str, Any]]) -> None:
            for d in drafts:
                d["attributes"]["demo.scenario"] = scenario
                ops.append(Op("draft", scenario, d))

        a = "agent-jml-01"
        run("self_grant", [run_step("run-p-self", 0, a, jml, trig, "grant_entitlement", SERVICE_PRINCIPAL,
                                    "salesforce", "sf-profile", 1, resource__entitlement="sales-standard",
                                    target__identity_type="service")])
        run("model_final_authority", [run_step("run-p-model", 0, a, jml, trig, "assign_role", "u900002", "aws",
                                               "role/ReadOnly", 1, decision__authority="model")])
        run("unapproved_privileged_grant", [run_step("run-p-unapproved", 0, a, jml, trig, "assign_role", "u900003",
                                                     "aws", "role/Admin", 3)])
        run("missing_evidence", [run_step("run-p-noevidence", 0, a, jml, ("joiner", None), "add_group_member",
                                          "u900004", "entra-id", "grp-sales", 1, inputs_used=[])])
        credit = {"name": "credit_score", "source": "model"}
        run("input_outside_allowlist", [run_step("run-p-inputs", 0, a, jml, trig, "add_group_member", "u900005",
                                                 "entra-id", "grp-sales", 1, inputs_used=[*HR_INPUTS, credit])])
        run("system_outside_boundary", [run_step("run-p-system", 0, a, jml, trig, "grant_entitlement", "u900006",
                                                 "payroll-prod", "payroll-app", 1,
                                                 resource__entitlement="payroll-viewer")])
        run("stale_policy_version", [run_step("run-p-stale", 0, a, jml, trig, "add_group_member", "u900007",
                                              "entra-id", "grp-sales", 1, policy__policy_version="2")])
        run("grant_to_terminated", [run_step("run-p-terminated", 0, a, jml, ("mover", "HR-999008"),
                                             "grant_entitlement", "u900008", "salesforce", "sf-profile", 1,
                                             resource__entitlement="sales-standard",
                                             target__lifecycle_state="terminated")])
        run("sod_toxic_pair", [
            run_step("run-p-sod", 0, "agent-access-01", "access-request", ("access_request", "REQ-999009"),
                     "grant_entitlement", "u900009", "sap", "sap-fi", 1, resource__entitlement="ap-create-vendor"),
            run_step("run-p-sod", 1, "agent-access-01", "access-request", ("access_request", "REQ-999009"),
                     "grant_entitlement", "u900009", "sap", "sap-fi", 1, resource__entitlement="ap-approve-payment"),
        ])
        # Escalation chains: each step on its own passes the per-event rules.
        rogue = "agent-jml-03"
        run("esc_group_nesting", [
            run_step("run-p-esc-group", 0, rogue, jml, ("joiner", "HR-999010"), "create_group", "grp-tmp-sync",
                     "entra-id", "grp-tmp-sync", 0, target__identity_type="service"),
            run_step("run-p-esc-group", 1, rogue, jml, ("joiner", "HR-999010"), "add_group_member", SERVICE_PRINCIPAL,
                     "entra-id", "grp-tmp-sync", 1, target__identity_type="service", agent__on_behalf_of=None),
            run_step("run-p-esc-group", 2, rogue, jml, ("joiner", "HR-999010"), "assign_role", "grp-tmp-sync",
                     "entra-id", "role/GlobalReader", 2, decision__approved_by="mgr-sales",
                     target__identity_type="service"),
            run_step("run-p-esc-group", 3, rogue, jml, ("joiner", "HR-999010"), "assign_role", "grp-tmp-sync",
                     "entra-id", "role/GlobalAdmin", 3, decision__approved_by="mgr-sales",
                     decision__recommended_by="model",
                     decision__authority="policy_engine", target__identity_type="service",
                     resource__entitlement="global-admin"),
        ])
        run("esc_tier_stepping", [
            run_step("run-p-esc-tier", i, rogue, jml, ("mover", "HR-999011"), "assign_role", "u900011", "aws",
                     f"role/Step{i}", i + 1, decision__approved_by="mgr-eng" if i + 1 >= 2 else None)
            for i in range(3)
        ])
        run("esc_transient_privilege", [
            run_step("run-p-esc-transient", 0, rogue, jml, ("mover", "HR-999012"), "grant_entitlement", "u900012",
                     "aws", "role/Admin", 3, resource__entitlement="aws-admin", decision__approved_by="mgr-eng"),
            run_step("run-p-esc-transient", 1, rogue, jml, ("mover", "HR-999012"), "revoke_entitlement", "u900012",
                     "aws", "role/Admin", 3, resource__entitlement="aws-admin"),
        ])
        run("esc_delegation_self_grant", [
            run_step("run-p-esc-deleg", 0, "agent-access-01", "access-request", ("access_request", "REQ-999013"),
                     "grant_entitlement", "agent-access-02", "github", "org-acme", 1, resource__entitlement="delegate",
                     target__identity_type="agent", agent__on_behalf_of=None),
            run_step("run-p-esc-deleg", 1, "agent-access-02", "access-request", ("access_request", "REQ-999013"),
                     "grant_entitlement", "agent-access-02", "github", "org-acme", 3, resource__entitlement="org-owner",
                     target__identity_type="agent", agent__on_behalf_of="agent-access-01",
                     decision__approved_by="approver-7"),
        ])
        # Evidence-chain tampering: bypass the SDK's own hashing.
        tamper = run_step("run-p-tamper", 0, a, jml, trig, "add_group_member", "u900014", "entra-id", "grp-sales", 1,
                          attributes={"demo.scenario": "tampered_event"})
        ops.append(Op("record", "tampered_event", tamper, mutate=_tamper))
        gap = [run_step("run-p-gap", i, a, jml, trig, "add_group_member", "u900015", "entra-id", f"grp-{d}", 1,
                        attributes={"demo.scenario": "missing_step"}) for i, d in enumerate(("sales", "hr", "legal"))]
        ops.append(Op("draft", "missing_step", gap[0]))
        ops.append(Op("record", "missing_step", gap[1], send="skip"))
        ops.append(Op("draft", "missing_step", gap[2]))
        dup = run_step("run-p-dup", 0, a, jml, trig, "add_group_member", "u900016", "entra-id", "grp-sales", 1,
                       attributes={"demo.scenario": "duplicate_event_id"})
        dup_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        dup["event_id"] = dup_id
        ops.append(Op("draft", "duplicate_event_id", dup))
        dup2 = dict(dup, step=1, resource={**dup["resource"], "resource_id": "grp-finance"})
        ops.append(Op("record", "duplicate_event_id", dup2))
        return ops

    def _cross_run(self) -> list[Op]:
        """Chains split over runs on different partitions, minutes apart (event time in the recent past, so
        they are judged as they arrive), plus an SoD half granted 30 days ago."""
        ops: list[Op] = []
        now = datetime.now(UTC)
        used: set[int] = set()

        def run_id(name: str) -> str:
            """A run id whose partition (crc32 mod 6, the producer's) no other cross-run run uses."""
            for i in range(1000):
                run = f"run-x-{name}-{i}"
                p = zlib.crc32(run.encode()) % 6
                if p not in used or len(used) == 6:
                    used.add(p)
                    return run
            raise AssertionError("unreachable")

        def add(scenario: str, d: dict[str, Any], ago: timedelta, event_id: str | None = None) -> None:
            d["attributes"]["demo.scenario"] = scenario
            d["occurred_at"] = (now - ago).isoformat()
            if event_id is not None:
                d["event_id"] = event_id
            ops.append(Op("draft", scenario, d))

        rogue, jml, m = "agent-jml-04", "jml-provisioning", timedelta(minutes=1)
        used.clear()
        for i, t in enumerate((1, 2, 3)):
            add("xrun_tier_stepping", run_step(run_id("tier"), 0, rogue, jml, ("mover", f"HR-99902{i}"), "assign_role",
                                               "u900020", "aws", f"role/Step{t}", t,
                                               decision__approved_by="mgr-eng" if t == 2 else None), (30 - 10 * i) * m)
        used.clear()
        add("xrun_transient_privilege", run_step(run_id("jit"), 0, rogue, jml, ("mover", "HR-999030"),
                                                 "grant_entitlement", "u900030", "aws", "role/Admin", 3,
                                                 resource__entitlement="aws-admin", decision__approved_by="mgr-eng"),
                                               10 * m)
        add("xrun_transient_privilege", run_step(run_id("jit"), 0, rogue, jml, ("mover", "HR-999031"),
                                                 "revoke_entitlement", "u900030", "aws", "role/Admin", 3,
                                                 resource__entitlement="aws-admin"), 8 * m)
        used.clear()
        agents = ("agent-x-a", "agent-x-b", "agent-x-c")
        for i in range(2):
            add("xrun_delegation_laundering", run_step(
                run_id("deleg"), 0, agents[i], "access-request", ("access_request", f"REQ-99904{i}"), "assign_role",
                agents[i + 1], "entra-id", "role/PrivilegedRoleAdministrator", 2, target__identity_type="agent",
                agent__on_behalf_of="svc-x-owner" if i == 0 else None, decision__approved_by="approver-7"),
                (20 - i) * m)
        add("xrun_delegation_laundering", run_step(
            run_id("deleg"), 0, agents[2], "access-request", ("access_request", "REQ-999042"), "grant_entitlement",
            "svc-x-owner", "aws", "role/Admin", 3, resource__entitlement="aws-admin",
            target__identity_type="service", agent__on_behalf_of=None,
            decision__approved_by="approver-7"), 12 * m)
        used.clear()
        # The same laundering through a group: agent-x-g-a (for svc-x-g-owner) gives a group role admin,
        # another agent makes agent-x-g-b a member, and agent-x-g-b grants the owner admin.
        add("xrun_group_laundering", run_step(
            run_id("gdeleg"), 0, "agent-x-g-a", "access-request", ("access_request", "REQ-999045"), "assign_role",
            "grp-x-deleg", "entra-id", "role/PrivilegedRoleAdministrator", 2, target__identity_type="service",
            agent__on_behalf_of="svc-x-g-owner", decision__approved_by="approver-7"), 22 * m)
        add("xrun_group_laundering", run_step(
            run_id("gdeleg"), 0, "agent-x-g-m", "access-request", ("access_request", "REQ-999046"),
            "add_group_member", "agent-x-g-b", "entra-id", "grp-x-deleg", 1, target__identity_type="agent",
            agent__on_behalf_of=None, decision__approved_by="approver-7"), 21 * m)
        add("xrun_group_laundering", run_step(
            run_id("gdeleg"), 0, "agent-x-g-b", "access-request", ("access_request", "REQ-999047"), "grant_entitlement",
            "svc-x-g-owner", "aws", "role/Admin", 3, resource__entitlement="aws-admin",
            target__identity_type="service", agent__on_behalf_of=None, decision__approved_by="approver-7"), 11 * m)
        used.clear()
        add("xrun_sod_against_holdings", run_step(run_id("sod"), 0, "agent-access-01", "access-request",
                                                  ("access_request", "REQ-999050"), "grant_entitlement", "u900050",
                                                  "sap",
                                                  "sap-fi", 1, resource__entitlement="ap-create-vendor"),
                                                timedelta(days=30))
        add("xrun_sod_against_holdings", run_step(run_id("sod"), 0, "agent-access-02", "access-request",
                                                  ("access_request", "REQ-999051"), "grant_entitlement", "u900050",
                                                  "sap",
                                                  "sap-fi", 1, resource__entitlement="ap-approve-payment"), 9 * m)
        used.clear()
        dup_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        add("xrun_duplicate_event_id", run_step(run_id("dup"), 0, "agent-jml-01", jml, ("joiner", "HR-999060"),
                                                "add_group_member", "u900060", "entra-id", "grp-sales", 1), 7 * m,
                                                dup_id)
        add("xrun_duplicate_event_id", run_step(run_id("dup"), 0, "agent-jml-01", jml, ("joiner", "HR-999061"),
                                                "add_group_member", "u900060", "entra-id", "grp-finance", 1), 6 * m,
            dup_id)
        used.clear()
        add("xrun_grant_to_leaver", run_step(run_id("left"), 0, "agent-jml-02", jml, ("leaver", "HR-999070"),
                                             "disable_account", "u900070", "entra-id", "user-account", 0,
                                             target__lifecycle_state="terminated"), timedelta(days=60))
        add("xrun_grant_to_leaver", run_step(run_id("left"), 0, "agent-jml-02", jml, ("mover", "HR-999071"),
                                             "grant_entitlement", "u900070", "salesforce", "sf-profile", 1,
                                             resource__entitlement="sales-standard"), 5 * m)
        used.clear()
        nester = "agent-x-nest"
        add("xrun_group_nesting", run_step(run_id("nest"), 0, nester, jml, ("joiner", "HR-999080"), "create_group",
                                           "grp-x-sync", "entra-id", "grp-x-sync", 0, target__identity_type="service"),
                                         28 * m)
        add("xrun_group_nesting", run_step(run_id("nest"), 0, nester, jml, ("joiner", "HR-999081"), "add_group_member",
                                           "svc-x-nest-owner", "entra-id", "grp-x-sync", 1,
                                           target__identity_type="service",
                                           agent__on_behalf_of="svc-x-nest-owner"), 18 * m)
        add("xrun_group_nesting", run_step(run_id("nest"), 0, nester, jml, ("mover", "HR-999082"), "assign_role",
                                           "grp-x-sync", "entra-id", "role/GlobalAdmin", 3,
                                           target__identity_type="service",
                                           agent__on_behalf_of="svc-x-nest-owner", decision__approved_by="mgr-sales",
                                           resource__entitlement="global-admin"), 7 * m)  # past the 300 s grace
        return ops

    def _bad(self) -> list[Op]:
        valid = run_step("run-bad", 0, "agent-jml-01", "jml-provisioning", ("joiner", "HR-1"), "create_account",
                         "u1", "entra-id", "user-account", 0)
        return [
            Op("raw", "garbage_bytes", b"\x17not-avro-at-all", key=b"run-bad"),
            Op("raw", "unknown_fingerprint", b"\xc3\x01" + b"\xee" * 8 + b"\x00\x02", key=b"run-bad"),
            Op("record", "truncated_avro", valid, send="truncate"),
            Op("record", "tier_out_of_range", dict(valid), mutate=_tier9, send="raw"),
            Op("record", "step_int32_overflow", dict(valid), mutate=_step_overflow, send="raw"),
            Op("record", "oversized_event", dict(valid), mutate=_oversized, send="raw"),
        ]

    def ops(self, events: int) -> Iterator[Op]:
        """Benign runs interleaved with the planted ones, about ``events`` events in all."""
        special = ((self._planted() if self.planted else []) + (self._cross_run() if self.cross_run else [])
                   + (self._bad() if self.bad_inputs else []))
        every = max(1, events // (len(special) + 1))
        makers = (self._joiner, self._joiner, self._mover, self._leaver, self._request, self._auth, self._auth)
        produced, n = 0, 0
        while produced < events:
            for d in makers[n % len(makers)](n):
                yield Op("draft", "benign", d)
                produced += 1
                if special and produced % every == 0:
                    op = special.pop(0)
                    yield op
                    produced += 1
            n += 1
        yield from special


def _tamper(record: dict[str, Any]) -> dict[str, Any]:
    record = dict(record, resource={**record["resource"], "privilege_tier": 3})  # changed after hashing
    return record


def _step_overflow(record: dict[str, Any]) -> dict[str, Any]:
    return dict(record, step=2**31 + 5)  # over Avro int: the store used to refuse it forever


def _oversized(record: dict[str, Any]) -> dict[str, Any]:
    # ~960 KB: under the producer's 1,000,000-byte record, over the event limit (its assessment would not fit)
    return dict(record, attributes={f"blob{i:03d}": "x" * 8000 for i in range(120)})


def _tier9(record: dict[str, Any]) -> dict[str, Any]:
    return dict(record, resource={**record["resource"], "privilege_tier": 9})
