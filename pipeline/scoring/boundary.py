"""Decision-boundary rules: what a workflow's agents may do, on which systems, with which inputs, under
which policy versions. All read the workflow's resolved boundary (``policy.boundary_for``)."""

from __future__ import annotations

from ..events import TransitionDict
from . import catalogue as c
from .context import ScoringContext
from .findings import Finding
from .rules import Rule

_SHOWN = 5  # offending values named in a message; the rest are counted


def _names(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:_SHOWN])
    return shown if len(values) <= _SHOWN else f"{shown} and {len(values) - _SHOWN} more"


def input_outside_allowlist(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    inputs = ev["inputs_used"]
    if not inputs:
        return []
    allowed = ctx.policy.policy.boundary_for(ev["workflow_id"]).inputs_for(ev["action"])
    if allowed is None:
        return []
    bad = sorted({i["name"] for i in inputs if i["name"] not in allowed})
    if not bad:
        return []
    return [c.INPUT_OUTSIDE_ALLOWLIST.finding(
        f"{ev['action']} in {ev['workflow_id']!r} evaluated {_names(bad)} outside the input allowlist")]


def too_many_signals(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    cap = ctx.policy.policy.boundary_for(ev["workflow_id"]).max_signals
    n = len(ev["inputs_used"])
    if cap is None or n <= cap:
        return []
    return [c.TOO_MANY_SIGNALS.finding(
        f"{ev['action']} in {ev['workflow_id']!r} evaluated {n} signals, more than max_signals={cap}")]


def action_outside_boundary(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    allowed = ctx.policy.policy.boundary_for(ev["workflow_id"]).allowed_actions
    if allowed is None or ev["action"] in allowed:
        return []
    return [c.ACTION_OUTSIDE_BOUNDARY.finding(
        f"agent {ev['agent']['agent_id']!r} took {ev['action']!r}, not allowed in workflow {ev['workflow_id']!r}")]


def system_outside_boundary(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    allowed = ctx.policy.policy.boundary_for(ev["workflow_id"]).allowed_systems
    system = ev["resource"]["system"]
    if allowed is None or system in allowed:
        return []
    return [c.SYSTEM_OUTSIDE_BOUNDARY.finding(
        f"agent {ev['agent']['agent_id']!r} acted on system {system!r}, outside workflow {ev['workflow_id']!r}")]


def unapproved_policy_version(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    ref = ev["policy"]
    if ctx.policy.policy.version_approved(ref["policy_id"], ref["policy_version"]) is not False:
        return []
    return [c.UNAPPROVED_POLICY_VERSION.finding(
        f"decision under {ref['policy_id']!r} version {ref['policy_version']!r}, which is not an approved version")]


BOUNDARY_RULES: tuple[Rule, ...] = (
    input_outside_allowlist, too_many_signals, action_outside_boundary, system_outside_boundary,
    unapproved_policy_version,
)
