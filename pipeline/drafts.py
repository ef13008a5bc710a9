"""Transition drafts (the JSON form an agent's SDK call takes): a valid benign event with defaults, changed
where a caller says. One builder for the demo workload, the benchmarks and the tests.

A change names a field by its path: a top-level name (``run_id``), a dotted path
(``"resource.privilege_tier"``) or, as a keyword, the same path with ``__`` for the dot
(``resource__privilege_tier``). A path into a record must name one of its fields (a typo raises
``KeyError``); ``attributes`` is a free map.

Example::

    draft()                                                       # joiner adds u000001 to grp-sales
    draft(run_id="run-7", step=2, resource__privilege_tier=3)
    draft({"decision.authority": "model", "target.lifecycle_state": "terminated"})
"""

from __future__ import annotations

from collections.abc import Mapping
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
FREE_MAPS = frozenset({"attributes"})  # records whose keys are the caller's, not the schema's


def apply(doc: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Set each path of ``changes`` in ``doc`` (in place) and return it."""
    for key, value in changes.items():
        *parents, leaf = key.replace("__", ".").split(".")
        node = doc
        for p in parents:
            node = node[p]
        if parents and parents[-1] not in FREE_MAPS and leaf not in node:
            raise KeyError(f"{key}: not a field of {'.'.join(parents)}")
        node[leaf] = value
    return doc


def _fresh(node: Any) -> Any:
    """A copy of a JSON-shaped value (dicts, lists, scalars) that shares no dict or list with it. It does
    what ``copy.deepcopy`` does for :data:`BASE` in 15 µs instead of 50: the demo, the benchmarks and the
    integration tests draft hundreds of thousands of events, about 390 µs each from draft to wire bytes."""
    if type(node) is dict:
        return {k: _fresh(v) for k, v in node.items()}
    if type(node) is list:
        return [_fresh(v) for v in node]
    return node


def draft(changes: Mapping[str, Any] | None = None, /, **fields: Any) -> dict[str, Any]:
    """A fresh copy of :data:`BASE` with ``changes`` and ``fields`` applied (``fields`` last)."""
    return apply(apply(_fresh(BASE), changes or {}), fields)
