"""Audit reads: reconstruct a run (``agentgov trail``) and export assessments (``agentgov export``).

All reads use FINAL (exact under redelivery) and bound parameters (no event value becomes SQL). Filters
name only immutable event fields (run, agent, target, time), so every version of a row passes or fails
them together: skip indexes may drop granules without the exact-mode expansion (see docs/clickhouse.md).

What people read is inert: every agent-supplied string in the text trail goes through :func:`inert`
(defined in :mod:`pipeline.inert`, re-exported here: control characters, ESC/OSC/CSI, C1 controls and
bidirectional overrides become visible ``\\xNN`` / ``\\uNNNN`` escapes, so a value cannot move the
cursor, erase a line or forge a trail step), and JSON output escapes the same characters.

The first stored copy of an event_id is the one shown (migration 004); later copies are listed under it
from ``duplicates`` with AG-EVD-005.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from .inert import inert as inert
from .inert import json_inert
from .sinks.clickhouse import SCORER_FINDINGS, ClickHouseSink

# Safe because audit filters only use fields every version of a row shares (docs/clickhouse.md, "FINAL").
AUDIT_SETTINGS: dict[str, Any] = {"use_skip_indexes_if_final": 1, "use_skip_indexes_if_final_exact_mode": 0}

TRAIL_SQL = """
SELECT t.step AS step, t.event_id AS event_id, t.occurred_at AS occurred_at, t.from_state AS from_state,
       t.to_state AS to_state, t.agent_id AS agent_id, t.on_behalf_of AS on_behalf_of, t.model_id AS model_id,
       t.trigger_kind AS trigger_kind, t.trigger_ref AS trigger_ref, t.action AS action, t.target_id AS target_id,
       t.lifecycle_state AS lifecycle_state, t.system AS system, t.resource_id AS resource_id,
       t.entitlement AS entitlement, t.privilege_tier AS privilege_tier, t.inputs_used AS inputs_used,
       t.outcome AS outcome, t.authority AS authority, t.recommended_by AS recommended_by,
       t.approved_by AS approved_by, t.approval_ref AS approval_ref, t.policy_id AS policy_id,
       t.policy_version AS policy_version, t.decision_id AS decision_id, t.event_hash AS event_hash,
       t.prev_event_hash AS prev_event_hash, a.risk_score AS risk_score, a.risk_level AS risk_level,
       a.governance_policy_version AS governance_policy_version
FROM {db}.transitions AS t FINAL
LEFT JOIN (SELECT * FROM {db}.assessments FINAL WHERE run_id = {run:String}) AS a ON a.event_id = t.event_id
WHERE t.run_id = {run:String}
ORDER BY t.step, t.occurred_at
"""

FINDINGS_SQL = """
SELECT event_id, code, severity, category, message, evidence_fields, refs, related_event_ids, exception_id,
       exception_version
FROM {db}.findings FINAL
WHERE run_id = {run:String} AND """ + SCORER_FINDINGS + """
ORDER BY event_id, finding_idx
"""


DUPLICATES_SQL = """
SELECT event_id, stored_at, run_id, agent_id, step, action, system, resource_id, privilege_tier, outcome,
       event_hash, key_id, risk_score, finding_codes, source_partition, source_offset
FROM {db}.duplicates
WHERE event_id IN {ids:Array(String)}
ORDER BY event_id, stored_at
"""



def later_copies(sink: ClickHouseSink, event_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Later copies of these event_ids, kept apart from the originals (oldest first)."""
    out: dict[str, list[dict[str, Any]]] = {}
    if not event_ids:
        return out
    for row in sink.query(DUPLICATES_SQL, {"ids": event_ids}):
        out.setdefault(row["event_id"], []).append(row)
    return out


CROSS_RUN_SQL = """
SELECT finding_id, event_id AS completed_by, run_id AS completed_in, code, severity, category, message,
       [] AS evidence_fields, refs, related_event_ids, related_run_ids
FROM {db}.cross_run_findings FINAL
WHERE has(related_run_ids, {run:String})
ORDER BY occurred_at, finding_id
"""
"""The correlator's findings whose chain touches the run (any step, not only the completing one)."""


def trail(sink: ClickHouseSink, run_id: str) -> list[dict[str, Any]]:
    """Every step of a run in order, each with its findings, cross-run findings included on every step
    of the run that is part of the chain (naming the other runs), and any later copies of its event_id."""
    steps = sink.query(TRAIL_SQL, {"run": run_id}, AUDIT_SETTINGS)
    by_event: dict[str, list[dict[str, Any]]] = {}
    for f in sink.query(FINDINGS_SQL, {"run": run_id}, AUDIT_SETTINGS):
        by_event.setdefault(f.pop("event_id"), []).append(f)
    for f in sink.query(CROSS_RUN_SQL, {"run": run_id}, AUDIT_SETTINGS):
        f["other_runs"] = [r for r in f["related_run_ids"] if r != run_id]
        for event_id in f["related_event_ids"]:
            by_event.setdefault(event_id, []).append(f)
    copies = later_copies(sink, [s["event_id"] for s in steps])
    for step in steps:
        step["findings"] = by_event.get(step["event_id"], [])
        step["later_copies"] = copies.get(step["event_id"], [])
    return steps


def render_trail(steps: list[dict[str, Any]]) -> str:
    if not steps:
        return "no such run"
    lines: list[str] = []
    for raw in steps:
        s: dict[str, Any] = {k: (inert(v) if isinstance(v, str) else v) for k, v in raw.items()}
        inputs = ", ".join(f"{inert(i['name'])}@{inert(i['source'])}" for i in s["inputs_used"]) or "-"
        lines.append(
            f"[{s['step']}] {s['occurred_at']:%Y-%m-%d %H:%M:%S.%f}"[:-3]
            + f"  {s['from_state']} -> {s['to_state']}  {s['action']} {s['system']}/{s['resource_id']}"
            + (f" ({s['entitlement']})" if s["entitlement"] else "")
            + f" tier {s['privilege_tier']} for {s['target_id']} [{s['lifecycle_state']}]"
        )
        obo = f" on behalf of {s['on_behalf_of']}" if s["on_behalf_of"] else ""
        lines.append(f"      agent {s['agent_id']}{obo}" + (f" model {s['model_id']}" if s["model_id"] else ""))
        lines.append(f"      trigger {s['trigger_kind']} {s['trigger_ref'] or '(no ref)'}; inputs {inputs}")
        lines.append(f"      policy {s['policy_id']}@{s['policy_version']}; outcome {s['outcome']} by "
                     f"{s['authority']}" + (f", recommended by {s['recommended_by']}" if s["recommended_by"] else "")
                     + (f"; approved by {s['approved_by']} ({s['approval_ref'] or 'no ref'})"
                        if s["approved_by"] else "; no approval"))
        lines.append(f"      risk {s['risk_score']} {s['risk_level']}; event_hash {s['event_hash'][:16]}…")
        for f in s["findings"]:
            lines.append(f"      ! {inert(f['code'])} {inert(f['severity'])}: {inert(f['message'])}"
                         + (f" [excepted by {inert(f['exception_id'])} v{f['exception_version']}]"
                            if f.get("exception_id") else ""))
            if "other_runs" in f:
                others = ", ".join(inert(r) for r in f["other_runs"]) or "-"
                lines.append(f"        cross-run chain {inert(f['finding_id'])}: other runs {others}; "
                             f"completed by {inert(f['completed_by'])} in {inert(f['completed_in'])}")
        for c in s.get("later_copies", ()):
            lines.append(
                f"      ! AG-EVD-005 critical: a later copy of this event_id was kept apart, not stored over "
                f"this one (stored {c['stored_at']:%Y-%m-%d %H:%M:%S}, run {inert(c['run_id'])}, agent "
                f"{inert(c['agent_id'])}, step {c['step']}, {inert(c['action'])} {inert(c['system'])}/"
                f"{inert(c['resource_id'])} tier {c['privilege_tier']} {inert(c['outcome'])}, risk "
                f"{c['risk_score']}, event_hash {inert(c['event_hash'])[:16]}…)")
        for d in s.get("decisions", ()):
            lines.append(f"      > {inert(d['kind'])} v{d['subject_version']} by {inert(d['actor'])} at "
                         f"{d['decided_at']:%Y-%m-%d %H:%M:%S} UTC: {inert(d['from_state'])} -> {inert(d['to_state'])}"
                         + (f" ({inert(d['classification'])}, {inert(d['reason'])})" if d["classification"] else "")
                         + (f": {inert(d['comment'])}" if d["comment"] else ""))
    return "\n".join(lines)


EXPORT_SQL = """
SELECT a.event_id AS event_id, a.run_id AS run_id, a.agent_id AS agent_id, a.target_id AS target_id,
       a.action AS action, a.occurred_at AS occurred_at, a.scored_at AS scored_at,
       nullIf(a.stored_at, toDateTime64(0, 3, 'UTC')) AS stored_at, a.risk_score AS risk_score,
       a.risk_level AS risk_level, a.scorer_version AS scorer_version,
       a.governance_policy_version AS governance_policy_version,
       a.governance_policy_hash AS governance_policy_hash
FROM {db}.assessments AS a FINAL
WHERE {where} AND (a.risk_score >= {min_score:UInt8} OR a.event_id IN (
    SELECT event_id FROM {db}.cross_run_findings FINAL WHERE {where}))
ORDER BY a.occurred_at, a.event_id
"""

EXPORT_CROSS_RUN_SQL = """
SELECT event_id, finding_id, code, severity, category, message, [] AS evidence_fields, refs,
       related_event_ids, related_run_ids
FROM {db}.cross_run_findings FINAL
WHERE {where}
ORDER BY occurred_at, finding_id
"""
"""Cross-run findings attach to the assessment of the event that completed the chain."""
# ``stored_at`` is when the store received the assessment (migration 007), the agent's ``occurred_at`` set
# beside it: a wide gap is a backdated event. Null for a row stored before 007, whose time was not recorded.

EXPORT_FINDINGS_SQL = """
SELECT event_id, code, severity, category, message, evidence_fields, refs, related_event_ids, exception_id,
       exception_version
FROM {db}.findings FINAL
WHERE {where} AND """ + SCORER_FINDINGS + """
ORDER BY event_id, finding_idx
"""


def _export_filter(run_id: str, agent_id: str) -> str:
    """Only the filters asked for: an ``({x} = '' OR col = {x})`` form would hide the key from the index."""
    where = ["occurred_at >= {since:DateTime64(3)}", "occurred_at < {until:DateTime64(3)}"]
    if run_id:
        where.append("run_id = {run:String}")
    if agent_id:
        where.append("agent_id = {agent:String}")
    return " AND ".join(where)


def export(sink: ClickHouseSink, *, since: datetime, until: datetime, run_id: str = "", agent_id: str = "",
           min_score: int = 0) -> Iterator[dict[str, Any]]:
    """Assessments with their findings, oldest first."""
    params = {"since": since, "until": until, "run": run_id, "agent": agent_id, "min_score": min_score}
    where = _export_filter(run_id, agent_id)
    rows = sink.query(EXPORT_SQL.replace("{where}", where), params, AUDIT_SETTINGS)
    findings: dict[str, list[dict[str, Any]]] = {}
    if rows:
        for f in sink.query(EXPORT_FINDINGS_SQL.replace("{where}", where), params, AUDIT_SETTINGS):
            findings.setdefault(f.pop("event_id"), []).append(f)
        for f in sink.query(EXPORT_CROSS_RUN_SQL.replace("{where}", where), params, AUDIT_SETTINGS):
            findings.setdefault(f.pop("event_id"), []).append(f)
    copies = later_copies(sink, [r["event_id"] for r in rows]) if rows else {}
    for row in rows:
        row["findings"] = findings.get(row["event_id"], [])
        row["later_copies"] = copies.get(row["event_id"], [])
        yield row


def to_json(doc: Any) -> str:
    """JSON with every character :func:`inert` escapes written as ``\\uNNNN`` (JSON itself only escapes C0)."""
    text = json.dumps(doc, default=lambda o: o.isoformat() + "Z" if isinstance(o, datetime) else str(o),
                      ensure_ascii=False)
    return json_inert(text)
