"""Valid transition drafts (JSON form) for tests."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "workflow_id": "jml-provisioning",
    "workflow_version": "3",
    "run_id": "run-1",
    "step": 0,
    "from_state": "start",
    "to_state": "provisioned",
    "agent": {"agent_id": "agent-jml-01", "agent_version": "1.4.2", "on_behalf_of": "svc-iga-automation",
              "model_id": "gpt-iam-2026-10"},
    "trigger": {"kind": "joiner", "ref": "HR-1001"},
    "action": "add_group_member",
    "target": {"identity_id": "u000001", "identity_type": "human", "lifecycle_state": "active"},
    "resource": {"system": "entra-id", "resource_id": "grp-sales", "entitlement": None, "privilege_tier": 1},
    "inputs_used": [{"name": "department", "source": "hris"}, {"name": "job_code", "source": "hris"}],
    "decision": {"outcome": "granted", "authority": "policy_engine", "recommended_by": "model",
                 "approved_by": None, "approval_ref": None},
    "policy": {"policy_id": "iga-access-policy", "policy_version": "7", "decision_id": "dec-1"},
    "attributes": {},
}


def draft(**changes: Any) -> dict[str, Any]:
    """A benign draft; nested changes with dotted keys: draft(**{"resource.privilege_tier": 3})."""
    doc = copy.deepcopy(BASE)
    for key, value in changes.items():
        node = doc
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return doc
