"""Separation of duties: no identity may hold both halves of a toxic pair (``separation_of_duties`` in
the policy). Checked across workflows, because the halves are usually granted by different ones.

What the target already holds is ``ctx.target_entitlements`` (derived by the consumer from the log or
store) brought up to date with ``ctx.target_history``. Replaying history the set already reflects is
a no-op (see :func:`~pipeline.scoring.context.entitlements_from_history`), so this is correct whether or
not the consumer filled the set, and it costs nothing for grants outside every toxic pair.
"""

from __future__ import annotations

from ..events import TransitionDict, name_key
from .catalogue import ASI03, NHI5, PR_AA_05, C, S, rule, spec
from .context import ScoringContext, access_name, entitlements_from_history
from .findings import Finding
from .rules import granted_access

TOXIC_PAIR = spec(
    "AG-SOD-001", "Separation-of-duties toxic pair completed", S.high, C.risk,
    "The grant gives an identity the second half of a toxic pair it must not hold together.",
    ("target.identity_id", "resource.entitlement", "resource.resource_id"),
    (PR_AA_05, ASI03, NHI5),
)


@rule(TOXIC_PAIR)
def toxic_pair(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not granted_access(ev):
        return []
    name = access_name(ev)
    partners = ctx.governance.sod_partners(name)
    if not partners:
        return []
    target = ev["target"]["identity_id"]
    own = [h for h in ctx.target_history if h["target"]["identity_id"] == target]
    # Names compare as name_key (case-insensitive, trimmed), like the policy's pairs.
    held = {name_key(n) for n in entitlements_from_history(own, ctx.target_entitlements)}
    if name_key(name) in held:
        return []  # already held: the pair, if any, was completed earlier
    found = []
    for partner, pair in partners:
        key = name_key(partner)
        if key not in held:
            continue
        related = tuple(h["event_id"] for h in own if name_key(access_name(h)) == key and granted_access(h))
        found.append(TOXIC_PAIR.finding(
            f"{target!r} granted {name!r} while holding {partner!r}: toxic pair {pair!r}",
            (*related[-1:], ev["event_id"])))
    return found

