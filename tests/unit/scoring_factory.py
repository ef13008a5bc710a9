"""Valid transitions as the consumer and the serde see them, built on :func:`pipeline.drafts.draft`, and
scoring contexts for rule tests.

    ev = event(**{"resource.privilege_tier": 3, "decision.approved_by": None})   # decoded, hashed (hot path)
    rec = record(run_id="run-9")                   # a complete Avro record, as the SDK sends it
    steps = chain({"action": "create_group"}, {"action": "add_group_member"}, each={"agent.agent_id": "a"})
    ctx = context_for(steps[-1], steps[:-1])        # split like the consumer does: run/target/agent
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Iterable
from functools import cache
from typing import Any

from pipeline.drafts import BASE, apply, draft
from pipeline.events import AgentTransition, TransitionDict, event_hash, sign
from pipeline.scoring.context import AgentBaseline, ScoringContext
from pipeline.scoring.engine import score
from pipeline.scoring.policy import LoadedPolicy, load_policy, parse_policy

T0 = 1_795_000_000_000  # 2026-11-18, epoch millis
AGENT = BASE["agent"]["agent_id"]
PRINCIPAL = BASE["agent"]["on_behalf_of"]

EVENT_FIELDS: dict[str, Any] = {  # what the SDK adds to a draft; decoded records carry them
    "event_id": "", "occurred_at": T0,
    "evidence": {"event_hash": "", "prev_event_hash": None, "signature": None, "key_id": None}, "tenant": None,
}

_ids = itertools.count(1)


def event(changes: dict[str, Any] | None = None, /, *, rehash: bool = True, key: tuple[str, bytes] | None = None,
          **dotted: Any) -> TransitionDict:
    """A complete, hashed event. Changes use dotted paths; ``rehash=False`` keeps a stale hash (tampering)."""
    doc: dict[str, Any] = draft(copy.deepcopy(EVENT_FIELDS), event_id=str(uuid.UUID(int=next(_ids))))
    apply(doc, {**(changes or {}), **dotted})
    if doc["step"] and "occurred_at" not in {**(changes or {}), **dotted}:
        doc["occurred_at"] = T0 + doc["step"] * 1000
    if rehash:
        doc["evidence"]["event_hash"] = event_hash(doc)
    elif not doc["evidence"]["event_hash"]:
        doc["evidence"]["event_hash"] = "0" * 64
    if key is not None:
        doc["evidence"]["key_id"], doc["evidence"]["signature"] = key[0], sign(doc, key[1])
    return doc


def chain(*steps: dict[str, Any], run_id: str = "run-1", start: int = T0, gap_ms: int = 1000,
          each: dict[str, Any] | None = None) -> list[TransitionDict]:
    """One run's events, step-numbered and hash-chained. ``each`` applies to every step."""
    out: list[TransitionDict] = []
    for i, changes in enumerate(steps):
        merged = {"run_id": run_id, "step": i, "occurred_at": start + i * gap_ms, **(each or {}), **changes}
        if out and "evidence.prev_event_hash" not in merged:
            merged["evidence.prev_event_hash"] = out[-1]["evidence"]["event_hash"]
        out.append(event(merged))
    return out


def record(**changes: Any) -> dict[str, Any]:
    """A complete Avro transition record (what the SDK would send): a draft with a random id and a hash."""
    doc = draft(**changes)
    doc.update(event_id=str(uuid.uuid4()), occurred_at="2026-05-01T10:00:00Z", evidence={"event_hash": "0" * 64})
    rec = AgentTransition.model_validate(doc).to_avro()
    rec["evidence"]["event_hash"] = event_hash(rec)
    rec["evidence"].setdefault("key_id", None)
    rec.setdefault("tenant", None)
    return rec


@cache
def default_policy() -> LoadedPolicy:
    return load_policy()


def policy_with(yaml_text: str) -> LoadedPolicy:
    return parse_policy(yaml_text, "<test>")


def context_for(ev: TransitionDict, history: Iterable[TransitionDict] = (), **kw: Any) -> ScoringContext:
    """The context the consumer would build for ``ev`` after seeing ``history`` (oldest first)."""
    hist = list(history)
    kw.setdefault("policy", default_policy())
    kw.setdefault("seen_event_hashes", {h["event_id"]: h["evidence"]["event_hash"] for h in hist})
    return ScoringContext(
        run_history=tuple(h for h in hist if h["run_id"] == ev["run_id"]),
        target_history=tuple(h for h in hist if h["target"]["identity_id"] == ev["target"]["identity_id"]),
        agent_history=tuple(h for h in hist if h["agent"]["agent_id"] == ev["agent"]["agent_id"]),
        **kw,
    )


def baseline(**kw: Any) -> AgentBaseline:
    """A warm baseline matching :data:`pipeline.drafts.BASE`'s behaviour."""
    doc: dict[str, Any] = {
        "agent_id": AGENT, "events": 1000,
        "actions": frozenset({"add_group_member", "grant_entitlement", "create_account", "assign_role"}),
        "systems": frozenset({"entra-id", "salesforce"}), "entitlements": frozenset({"sales-standard"}),
        "inputs": frozenset({"department", "job_code", "manager"}), "max_tier": 2, "grants_per_hour": 5.0,
        "stale_policy_share": 0.0, "as_of_ms": T0,
    }
    doc.update(kw)
    return AgentBaseline(**doc)


def codes(ev: TransitionDict, ctx: ScoringContext) -> list[str]:
    return [f.code for f in score(ev, ctx).findings]


def replay(events: list[TransitionDict], **kw: Any) -> list[list[str]]:
    """Score each event with the earlier ones as history, as the consumer does; codes per event."""
    return [codes(ev, context_for(ev, events[:i], **kw)) for i, ev in enumerate(events)]
