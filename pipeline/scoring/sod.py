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
from .context import ScoringContext, access_name, access_names, holdings_from_history
from .findings import Finding
from .policy import GovernancePolicy
from .rules import granted_access

TOXIC_PAIR = spec(
    "AG-SOD-001", "Separation-of-duties toxic pair completed", S.high, C.risk,
    "The grant gives an identity the second half of a toxic pair it must not hold together. A half is named "
    "by its entitlement or by its resource id, for the new grant and for each held one.",
    ("target.identity_id", "resource.entitlement", "resource.resource_id"),
    (PR_AA_05, ASI03, NHI5),
)


def sod_partners_of(ev: TransitionDict, policy: GovernancePolicy) -> tuple[tuple[str, str], ...]:
    """(partner, pair name) for every toxic pair either name of the access ``ev`` grants belongs to: its
    access name and its resource id, as ``privileged_name`` reads both for privileged access. An agent that
    labels ``resource_id=ap-approve-payment`` with ``entitlement="AP Payment Approver"`` still grants the
    ``ap-approve-payment`` half of a pair (the correlator's AG-XRN-005 reads the same names)."""
    res = ev["resource"]
    partners = policy.sod_partners(access_name(ev))
    if res["entitlement"]:  # else the resource id is the access name
        partners += policy.sod_partners(res["resource_id"])
        return tuple(dict.fromkeys(partners))
    return partners


@rule(TOXIC_PAIR)
def toxic_pair(ev: TransitionDict, ctx: ScoringContext) -> list[Finding]:
    if not granted_access(ev):
        return []
    partners = sod_partners_of(ev, ctx.governance)
    if not partners:
        return []
    target = ev["target"]["identity_id"]
    own = [h for h in ctx.target_history if h["target"]["identity_id"] == target]
    # What the target holds, each grant by both its names (folded by name_key, like the policy's pairs): a held
    # half counts whether the policy's name is its entitlement or its resource id.
    held = holdings_from_history(own, ctx.target_entitlements)
    if held.holds(access_names(ev)):
        return []  # already held: the pair, if any, was completed earlier
    name = access_name(ev)
    found = []
    for partner, pair in partners:
        holding = held.naming(name_key(partner))
        if not holding:
            continue
        grants = [g for g in holding if not isinstance(g, str)]  # a name from the store has no event here
        latest = max(grants, key=lambda g: (g["occurred_at"], g["step"]), default=None)
        found.append(TOXIC_PAIR.finding(
            f"{target!r} granted {name!r} while holding {partner!r}: toxic pair {pair!r}",
            (*([] if latest is None else [latest["event_id"]]), ev["event_id"])))
    return found
