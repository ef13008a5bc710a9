"""Evidence rules: is the event complete, unaltered, in its place in the run's hash chain, and signed?

The hash and signature are checked over :func:`pipeline.events.canonical_bytes`, computed once per event.
Chain checks read ``ctx.run_history`` (earlier events of the run); duplicate-id checks read
``ctx.seen_event_hashes`` (event_id -> event_hash of events already seen on the partition; capped, so
both also look in the run's history).
"""

from __future__ import annotations

import hashlib
import hmac
from fnmatch import fnmatchcase

from ..events import ACCESS_CHANGES, TransitionDict, canonical_bytes, is_blank
from .catalogue import (
    ASI03,
    ASI07,
    ASI09,
    ASI10,
    DE_AE,
    NHI4,
    NHI9,
    PR_AA_03,
    PR_AA_04,
    PR_AA_05,
    PR_DS_01,
    C,
    S,
    rule,
    spec,
)
from .context import ScoringContext
from .findings import Finding

MISSING_EVIDENCE = spec(
    "AG-EVD-001", "Access change without evidence", S.medium, C.evidence,
    "An access change lacks its trigger reference, the inputs it evaluated, or the policy version in force "
    "(a reference or version of only whitespace or invisible characters is missing).",
    ("trigger.ref", "inputs_used", "policy.policy_version"),
    (ASI09, PR_AA_05, DE_AE),
)


@rule(MISSING_EVIDENCE)
def missing_evidence(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if ev["action"] not in ACCESS_CHANGES:
        return []
    missing = []
    if is_blank(ev["trigger"]["ref"]):  # whitespace or invisible characters trace to nothing
        missing.append("trigger.ref")
    if not ev["inputs_used"]:
        missing.append("inputs_used")
    if is_blank(ev["policy"]["policy_version"]):  # an invisible version names no version either
        missing.append("policy.policy_version")
    if not missing:
        return []
    return [MISSING_EVIDENCE.finding(f"{ev['action']} without {', '.join(missing)}")]


HASH_MISMATCH = spec(
    "AG-EVD-002", "Event hash does not match its content", S.critical, C.evidence,
    "evidence.event_hash is not the SHA-256 of the event's canonical content: the event was changed "
    "after it was hashed.",
    ("evidence.event_hash", "event_id"),
    (PR_DS_01, PR_AA_04, ASI07),
)
BAD_SIGNATURE = spec(
    "AG-EVD-006", "Unsigned event or bad signature", S.critical, C.evidence,
    "Signing is required and the event carries no signature, names an unknown key, or its HMAC-SHA256 "
    "does not verify; or a signature that is present does not verify.",
    ("evidence.signature", "evidence.key_id", "agent.agent_id"),
    (PR_AA_03, PR_AA_04, NHI4, ASI07),
)
KEY_NOT_BOUND = spec(
    "AG-EVD-007", "Signed with a key not registered for the agent", S.critical, C.evidence,
    "The signature verifies, but its key_id is not registered for the event's agent.agent_id "
    "(signing_key_agents): one agent signed in another's name, or a key is used outside its binding.",
    ("evidence.key_id", "agent.agent_id"),
    (PR_AA_03, PR_AA_04, NHI9, ASI03, ASI07),
)


@rule(HASH_MISMATCH, BAD_SIGNATURE, KEY_NOT_BOUND)
def integrity(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    """AG-EVD-002 (content hash) and AG-EVD-006 (signature), sharing one canonical encoding."""
    evidence = ev["evidence"]
    content = canonical_bytes(ev)
    found: list[Finding] = []
    claimed = evidence["event_hash"]
    actual = hashlib.sha256(content).hexdigest()
    if not hmac.compare_digest(claimed.encode(), actual.encode()):
        found.append(HASH_MISMATCH.finding(
            f"event {ev['event_id']} claims event_hash {claimed[:16]}… but its content hashes to {actual[:16]}…"))
    key_id = evidence.get("key_id")
    problem = _signature_problem(evidence.get("signature"), key_id, content, ctx)
    if problem:
        found.append(BAD_SIGNATURE.finding(
            f"event {ev['event_id']} by agent {ev['agent']['agent_id']!r}: {problem}"))
    elif ctx.key_agents and evidence.get("signature") and key_id in ctx.signing_keys:
        agent = ev["agent"]["agent_id"]
        allowed = ctx.key_agents.get(key_id, ())
        if not any(fnmatchcase(agent, pattern) for pattern in allowed):
            whom = f"registered for {', '.join(repr(p) for p in allowed)}" if allowed else "registered for no agent"
            found.append(KEY_NOT_BOUND.finding(
                f"event {ev['event_id']} claims agent {agent!r} but is signed with key_id {key_id!r}, {whom}"))
    return found


def _signature_problem(signature: str | None, key_id: str | None, content: bytes, ctx: ScoringContext) -> str:
    if not signature:
        return "unsigned, and signatures are required" if ctx.require_signatures else ""
    key = ctx.signing_keys.get(key_id) if key_id else None
    if key is None:
        # Without the key nothing can be verified; that only matters when signing is required.
        return f"signed with unknown key_id {key_id!r}" if ctx.require_signatures else ""
    expected = hmac.new(key, content, hashlib.sha256).hexdigest()
    if hmac.compare_digest(signature.lower().encode(), expected.encode()):
        return ""
    return f"HMAC signature does not verify with key_id {key_id!r}"


CHAIN_GAP = spec(
    "AG-EVD-003", "Missing step in the run's evidence chain", S.high, C.evidence,
    "A step's prev_event_hash is missing or does not match the previous step's event_hash, or steps "
    "between it and the last seen step of the run never arrived, or the run is first seen at a step > 0 "
    "by a scorer whose context holds every run of the partition over its window.",
    ("run_id", "step", "evidence.prev_event_hash"),
    (PR_DS_01, DE_AE, ASI10),
)


@rule(CHAIN_GAP)
def chain_gap(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    step, prev = ev["step"], ev["evidence"]["prev_event_hash"]
    run = ev["run_id"]
    if step > 0 and not prev:
        return [CHAIN_GAP.finding(f"run {run!r} step {step} has no prev_event_hash: the chain is broken")]
    history = ctx.run_history
    if not history and step > 0 and ctx.runs_complete:
        # No earlier step of this run in a context known to hold every run of the partition over the
        # window: its steps before this one never arrived (or are older than the window), and its
        # prev_event_hash links to nothing the pipeline saw.
        missing = "step 0" if step == 1 else f"steps 0-{step - 1}"
        return [CHAIN_GAP.finding(
            f"run {run!r} first seen at step {step}: {missing} never arrived within the scorer's context window, "
            f"so prev_event_hash {prev[:16]}… links to no event seen", (ev["event_id"],))]
    if not history or step == 0:
        return []
    last = max(history, key=lambda h: h["step"])
    if step > last["step"] + 1:
        missing = f"step {last['step'] + 1}" if step == last["step"] + 2 else f"steps {last['step'] + 1}-{step - 1}"
        return [CHAIN_GAP.finding(
            f"run {run!r} step {step} follows step {last['step']}: {missing} never arrived",
            (last["event_id"], ev["event_id"]))]
    if step != last["step"] + 1:
        return []  # a repeated or late step: AG-EVD-004
    before = [h for h in history if h["step"] == step - 1]
    if any(h["evidence"]["event_hash"] == prev for h in before):
        return []
    return [CHAIN_GAP.finding(
        f"run {run!r} step {step} prev_event_hash {prev[:16]}… does not match step {step - 1}'s event_hash "
        f"{before[-1]['evidence']['event_hash'][:16]}…",
        (before[-1]["event_id"], ev["event_id"]))]


REORDERED_OR_REPLAYED = spec(
    "AG-EVD-004", "Reordered or replayed step", S.high, C.evidence,
    "A step arrived after a later step of the same run, repeats a step number already seen, or is an "
    "exact replay of an event already seen.",
    ("run_id", "step", "event_id", "evidence.event_hash"),
    (PR_DS_01, PR_AA_04, ASI07),
)


@rule(REORDERED_OR_REPLAYED)
def reordered_or_replayed(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    event_id, digest, step = ev["event_id"], ev["evidence"]["event_hash"], ev["step"]
    earlier = ctx.seen_event_hashes.get(event_id)
    if earlier is None:
        # The seen map is capped (oldest evicted first); the run's own history still holds recent events.
        earlier = next((h["evidence"]["event_hash"] for h in ctx.run_history if h["event_id"] == event_id), None)
    if earlier == digest:
        return [REORDERED_OR_REPLAYED.finding(
            f"event {event_id} (run {ev['run_id']!r} step {step}) is a replay of an event already seen",
            (event_id,))]
    later = [h for h in ctx.run_history if h["step"] >= step and h["event_id"] != event_id]
    if not later:
        return []
    top = max(h["step"] for h in later)
    what = f"repeats step {step}" if top == step else f"arrived after step {top}"
    return [REORDERED_OR_REPLAYED.finding(
        f"run {ev['run_id']!r} step {step} (event {event_id}) {what}",
        (*(h["event_id"] for h in later), event_id))]


DUPLICATE_ID_CONFLICT = spec(
    "AG-EVD-005", "Duplicate event_id with different content", S.critical, C.evidence,
    "An event reuses the event_id of an earlier event but its content hash differs: one of them was "
    "forged or altered.",
    ("event_id", "evidence.event_hash"),
    (PR_DS_01, ASI07),
)


@rule(DUPLICATE_ID_CONFLICT)
def duplicate_id_conflict(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    event_id, digest = ev["event_id"], ev["evidence"]["event_hash"]
    earlier = ctx.seen_event_hashes.get(event_id)
    if earlier is None:
        # The seen map is capped; the run's own history still holds recent events.
        earlier = next((h["evidence"]["event_hash"] for h in ctx.run_history if h["event_id"] == event_id), None)
    if earlier is None or earlier == digest:
        return []
    return [DUPLICATE_ID_CONFLICT.finding(
        f"event_id {event_id} reused: earlier content hash {earlier[:16]}…, this one {digest[:16]}…",
        (event_id,))]

