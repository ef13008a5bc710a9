"""Recertification reads from the audit store: held access in a scope, campaign items, attribute usage.

Held access comes from ``access_changes`` (migration 003: every executed grant and revoke, no TTL): a
(target, system, access) is held when its latest change is a grant. The evidence of the grant (workflow,
policy version, inputs) comes from ``transitions`` while it is retained; older grants show it as not
retained. Campaigns, items and their decisions are ``decisions`` rows (subject kinds ``campaign``,
``campaign_item``, ``attribute_review``, ``attribute``), so the current state of a subject is its row with
the highest version, as for findings.

Example::

    rows = RecertStore(store).holdings(Scope(min_tier=2), now_ms)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ..events import GRANTS, name_key
from ..sinks.clickhouse import SCORER_FINDINGS
from .recert import Scope, item_id, split_item_id
from .store import ReviewStore, _ms, identity_sql

# Access that stays held (an allow_auth is a one-off authentication decision, not standing access).
HELD_ACTIONS = sorted(str(a) for a in GRANTS if str(a) != "allow_auth")
LEAVE_ACTIONS = ["disable_account", "delete_account"]
ACCOUNT_ACTIONS = ["create_account", *LEAVE_ACTIONS]

# No FINAL on access_changes: a redelivered duplicate row changes neither argMax nor max, and skipping the
# merge-on-read keeps a scope over millions of changes at a few seconds. An access's latest change is the
# latest by event time; of changes stamped the same millisecond, a grant (then the event id). Ties have no
# order of their own, and the event id is the agent's choice: by id alone, an agent could stamp a grant and
# a no-op revoke alike and leave held access out of every campaign. A grant winning the tie puts the access
# before a reviewer, who sees both changes in its trail; over-including is the safe side of a review.
HOLDINGS_SQL = """
SELECT h.g_target AS target_id, h.system AS system, h.access AS access, h.g_event AS event_id,
       h.g_run AS run_id, h.g_agent AS agent_id, h.tier AS tier, h.g_approved AS approved_by,
       h.g_authority AS authority, h.g_action AS action, h.granted_at AS granted_at, l.accounts AS accounts
FROM (
    WITH (occurred_at, action IN {held:Array(String)}, event_id) AS latest
    SELECT IDENTITY AS identity, system, access,
           argMax(target_id, latest) AS g_target,
           argMax(action, latest) AS g_action, argMax(event_id, latest) AS g_event,
           argMax(run_id, latest) AS g_run, argMax(agent_id, latest) AS g_agent,
           argMax(privilege_tier, latest) AS tier,
           argMax(approved_by, latest) AS g_approved,
           argMax(authority, latest) AS g_authority, max(occurred_at) AS granted_at
    FROM {db}.access_changes
    {prefilter}
    GROUP BY identity, system, access
    HAVING g_action IN {held:Array(String)} {having}
) AS h
LEFT JOIN (
    SELECT identity, groupArray((system, at, last)) AS accounts FROM (
        SELECT IDENTITY AS identity, system, max(occurred_at) AS at,
               argMax(action, (occurred_at, action)) AS last
        FROM {db}.access_changes WHERE action IN {account:Array(String)} GROUP BY identity, system)
    GROUP BY identity
) AS l ON l.identity = h.identity
WHERE {where}
ORDER BY h.tier DESC, h.granted_at, h.identity, h.system, h.access
""".replace("IDENTITY", identity_sql("target_id"))
"""An identity is matched in any case (docs/guarantees.md), as the correlator matches it: a grant to
``U-Case`` and its revoke by ``u-case`` leave nothing held, and ``u-case``'s account disabled on the identity
provider is the same person leaving; and so are its spellings in other Unicode forms (:func:`.store.identity_sql`,
which says where it still differs from the correlator's fold). The holding shows the spelling of its latest
change."""

DECIDED_TARGET = identity_sql("payload['target_id']")
SNAPSHOT_TARGET = identity_sql("snap['target_id']")

# The grant events' evidence, while the transitions are retained (one bounded read by event id).
EVIDENCE_SQL = """
SELECT event_id, workflow_id, policy_id, policy_version, inputs_used FROM {db}.transitions FINAL
WHERE event_id IN {ids:Array(String)}
"""

ITEMS_SQL = """
SELECT subject_id, argMax(to_state, subject_version) AS state, max(subject_version) AS version,
       argMax(payload['assignee'], subject_version) AS assignee, argMin(payload, subject_version) AS snap,
       argMax(kind, subject_version) AS last_kind, argMax(actor, subject_version) AS last_actor,
       argMax(comment, subject_version) AS last_comment, argMax(decided_at, subject_version) AS last_at,
       argMax(payload['end_date'], subject_version) AS end_date,
       argMax(decision_id, subject_version) AS last_decision_id
FROM {db}.decisions FINAL
WHERE subject_kind = 'campaign_item' AND subject_id > {lo:String} AND subject_id < {hi:String}
GROUP BY subject_id
"""


DISMISSED = ("false_positive", "benign_positive", "duplicate")
"""Closing classifications that take a finding out of a recommendation: a reviewer judged it wrong,
authorised, or a copy of another. An open finding, or one closed as true_positive, still counts."""

# Findings of these runs (scorers' and cross-run ones, which carry the completing event's id) whose latest
# decision closed them with a DISMISSED classification.
DISMISSED_SQL = f"""
SELECT subject_id
FROM {{db}}.decisions FINAL
WHERE subject_kind = 'finding' AND subject_id IN (
    SELECT concat(event_id, '/', code) FROM {{db}}.findings WHERE run_id IN {{runs:Array(String)}}
    UNION ALL
    SELECT concat(event_id, '/', code) FROM {{db}}.cross_run_findings
    WHERE hasAny(related_run_ids, {{runs:Array(String)}}))
GROUP BY subject_id
HAVING argMax(to_state, subject_version) = 'closed'
   AND argMax(classification, subject_version) IN {DISMISSED!r}
"""


def _bounds(cid: str) -> dict[str, str]:
    return {"lo": f"{cid}/", "hi": f"{cid}0"}  # '0' follows '/': every '<cid>/...' id sorts between


class RecertStore:
    """Reads for campaigns and attribute reviews (shares the workbench's client and lock)."""

    def __init__(self, store: ReviewStore, identity_provider: Callable[[str], bool] | None = None) -> None:
        self.store = store
        # Whether a system's account is the person's identity (the policy's identity_providers,
        # ``GovernancePolicy.identity_provider``): that account going means the person left, whatever system
        # an access is on. None: only an access's own system's account counts.
        self.identity_provider = identity_provider or (lambda system: False)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return self.store.query(sql, params)

    # -- holdings -------------------------------------------------------------------------------
    def holdings(self, scope: Scope, now_ms: int, limit: int = 1_000_000) -> list[dict[str, Any]]:
        having, where, pre = [], ["1"], []
        params: dict[str, Any] = {"held": HELD_ACTIONS, "account": ACCOUNT_ACTIONS, "limit": limit}
        if scope.min_tier is not None:
            having.append("tier >= {tier:UInt8}")
            pre.append("privilege_tier >= {tier:UInt8}")
            params["tier"] = scope.min_tier
        if scope.agent:
            having.append(f"{identity_sql('g_agent')} = {identity_sql('{agent:String}')}")
            pre.append(f"{identity_sql('agent_id')} = {identity_sql('{agent:String}')}")
            params["agent"] = scope.agent
        if scope.within_days is not None:
            having.append("max(occurred_at) >= {since:DateTime64(3)}")
            pre.append("occurred_at >= {since:DateTime64(3)}")
            params["since"] = datetime.fromtimestamp(now_ms / 1000 - scope.within_days * 86400, UTC).replace(
                tzinfo=None)
        if scope.workflow:  # the workflow is on the grant's event (while the transitions are retained)
            where.append("h.g_event IN (SELECT event_id FROM {db}.transitions WHERE workflow_id = {wf:String})")
            params["wf"] = scope.workflow
        if scope.never_certified:
            where.append(f"(h.identity, h.system, h.access) NOT IN (SELECT {DECIDED_TARGET}, "
                         "payload['system'], payload['access'] FROM {db}.decisions "
                         "WHERE subject_kind = 'campaign_item' AND to_state = 'certified')")
        # Aggregate only the accesses a change in scope touched (the HAVING still judges the latest change):
        # a tier >= 2 campaign over a million holdings groups its few percent, not all of them.
        target = identity_sql("target_id")
        prefilter = (f"WHERE ({target}, system, access) IN (SELECT {target}, system, access "
                     "FROM {db}.access_changes WHERE " + " AND ".join(pre) + ")") if pre else ""
        sql = (HOLDINGS_SQL.replace("{prefilter}", prefilter).replace("{having}", "".join(f" AND {h}" for h in having))
               .replace("{where}", " AND ".join(where)) + " LIMIT {limit:UInt32}")
        rows = self.query(sql, params)
        evidence: dict[str, dict[str, Any]] = {}
        for i in range(0, len(rows), 50_000):
            ids = [r["event_id"] for r in rows[i:i + 50_000]]
            evidence.update((e["event_id"], e) for e in self.query(EVIDENCE_SQL, {"ids": ids}))
        blank = {"workflow_id": "", "policy_id": "", "policy_version": "", "inputs_used": []}
        for r in rows:
            ev = evidence.get(r["event_id"])
            r.update({k: (ev or blank)[k] for k in blank}, retained=ev is not None)
        if scope.workflow:
            rows = [r for r in rows if r["workflow_id"] == scope.workflow]
        for r in rows:
            r["granted_at_ms"] = _ms(r["granted_at"])
            left = self._left(r)
            r["identity_left"] = left is not None
            r["left_how"] = (f"{left[1]} on {left[2]} at {datetime.fromtimestamp(left[0] / 1000, UTC):%Y-%m-%d %H:%M} "
                             "UTC" if left is not None else "")
        return rows

    def _left(self, holding: dict[str, Any]) -> tuple[int, str, str] | None:
        """(when, how, system) the identity left after ``holding`` was granted, or None: the latest account
        change on the holding's own system, or on an identity provider, is a disable or delete stamped after
        the grant. An account on another system going (a legacy application's) is not the person leaving, and
        an account created again since is back (as AG-XRN-007 judges)."""
        granted = holding["granted_at_ms"]
        mine = name_key(holding["system"])
        out: tuple[int, str, str] | None = None
        for system, at, last in holding.get("accounts") or ():
            if (name_key(system) != mine and not self.identity_provider(system)) or last not in LEAVE_ACTIONS:
                continue
            when = _ms(at)
            if when is None or granted is None or when <= granted or when <= 0:
                continue
            if out is None or when > out[0]:
                out = (when, last, system)
        return out

    def findings_for(self, event_ids: list[str], run_ids: list[str]) -> tuple[dict[str, list[tuple[str, str]]],
                                                                            dict[str, list[tuple[str, str]]]]:
        """Findings per grant event and per run (per-event findings plus cross-run findings naming the run)."""
        by_event: dict[str, list[tuple[str, str]]] = {}
        by_run: dict[str, list[tuple[str, str]]] = {}
        if not run_ids:
            return by_event, by_run
        runs = {"runs": sorted(set(run_ids))}
        dismissed = {r["subject_id"] for r in self.query(DISMISSED_SQL, runs)}
        for r in self.query("SELECT event_id, run_id, code, severity FROM {db}.findings FINAL "
                            f"WHERE run_id IN {{runs:Array(String)}} AND exception_id IS NULL AND {SCORER_FINDINGS}",
                            runs):
            if f"{r['event_id']}/{r['code']}" in dismissed:
                continue
            pair = (r["code"], r["severity"])
            by_run.setdefault(r["run_id"], []).append(pair)
            by_event.setdefault(r["event_id"], []).append(pair)
        for r in self.query("SELECT arrayJoin(arrayIntersect(related_run_ids, {runs:Array(String)})) AS run_id, "
                            "event_id, code, severity FROM {db}.cross_run_findings FINAL "
                            "WHERE hasAny(related_run_ids, {runs:Array(String)})", runs):
            if f"{r['event_id']}/{r['code']}" not in dismissed:
                by_run.setdefault(r["run_id"], []).append((r["code"], r["severity"]))
        return by_event, by_run

    # -- campaigns ------------------------------------------------------------------------------
    def campaigns(self) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT subject_id AS campaign_id, argMin(payload, subject_version) AS header, "
            "argMax(to_state, subject_version) AS state, max(subject_version) AS version, "
            "argMax(actor, subject_version) AS last_actor, argMax(decided_at, subject_version) AS last_at "
            "FROM {db}.decisions FINAL WHERE subject_kind = 'campaign' GROUP BY subject_id")
        return sorted((self._campaign(r) for r in rows), key=lambda c: -c["created_at"])

    def campaign(self, cid: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT subject_id AS campaign_id, argMin(payload, subject_version) AS header, "
            "argMax(to_state, subject_version) AS state, max(subject_version) AS version, "
            "argMax(actor, subject_version) AS last_actor, argMax(decided_at, subject_version) AS last_at "
            "FROM {db}.decisions FINAL WHERE subject_kind = 'campaign' AND subject_id = {c:String} "
            "GROUP BY subject_id", {"c": cid})
        return self._campaign(rows[0]) if rows else None

    @staticmethod
    def _campaign(r: dict[str, Any]) -> dict[str, Any]:
        h = r["header"]
        return {"campaign_id": r["campaign_id"], "state": r["state"], "version": int(r["version"]),
                "name": h.get("name", ""), "owner": h.get("owner", ""), "created_by": h.get("created_by", ""),
                "created_at": int(h.get("created_at", "0")), "due_at": int(h.get("due_at", "0")),
                "scope": h.get("scope", ""), "item_count": int(h.get("item_count", "0")),
                "on_timeout": h.get("on_timeout", "none"), "last_actor": r["last_actor"],
                "last_at": _ms(r["last_at"])}

    def items(self, cid: str, *, state: str = "", recommendation: str = "", assignee: str = "", target: str = "",
              after: str = "", limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        """A page of items (keyset on the item id with ``after``; ``offset`` for numbered pages)."""
        having: list[str] = []
        params: dict[str, Any] = {**_bounds(cid), "limit": limit, "offset": offset}
        if target:
            having.append(f"{SNAPSHOT_TARGET} = {identity_sql('{tgt:String}')}")  # any spelling of the identity
            params["tgt"] = target
        if state:
            having.append("state = {st:String}")
            params["st"] = state
        if recommendation:
            having.append("snap['recommendation'] = {rec:String}")
            params["rec"] = recommendation
        if assignee:
            having.append("assignee = {asg:String}")
            params["asg"] = assignee
        sql = ITEMS_SQL
        if after:
            sql = sql.replace("subject_id > {lo:String}", "subject_id > {after:String}")
            params["after"] = max(after, params["lo"])
        if not having:
            # Items are numbered 1..N without gaps: an unfiltered page is a bounded range of the primary key,
            # not a scan to the campaign's end (GROUP BY would otherwise read every later item per page).
            first = offset + 1 + (split_item_id(after)[1] if after else 0)
            sql = ITEMS_SQL.replace("subject_id > {lo:String} AND subject_id < {hi:String}",
                                    "subject_id >= {first:String} AND subject_id <= {last:String}")
            params.update(first=item_id(cid, first), last=item_id(cid, first + limit - 1), offset=0)
        if having:
            sql += " HAVING " + " AND ".join(having)
        sql += " ORDER BY subject_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
        return [self._item(r) for r in self.query(sql, params)]

    def item(self, iid: str) -> dict[str, Any] | None:
        rows = self.query(ITEMS_SQL.replace("subject_id > {lo:String} AND subject_id < {hi:String}",
                                            "subject_id = {s:String}"), {"s": iid})
        return self._item(rows[0]) if rows else None

    @staticmethod
    def _item(r: dict[str, Any]) -> dict[str, Any]:
        snap = dict(r["snap"])
        out: dict[str, Any] = dict(snap)  # the snapshot first: the current state below wins (assignee)
        out.update({"item_id": r["subject_id"], "state": r["state"], "version": int(r["version"]),
               "assignee": r["assignee"], "last_kind": r["last_kind"], "last_actor": r["last_actor"],
               "last_comment": r["last_comment"], "last_at": _ms(r["last_at"]), "end_date": r["end_date"],
               "last_decision_id": r["last_decision_id"]})
        out["findings"] = json.loads(snap.get("findings", "[]"))
        out["reasons"] = json.loads(snap.get("reasons", "[]"))
        out["inputs"] = json.loads(snap.get("inputs", "[]"))
        out["granted_at_ms"] = int(snap.get("granted_at", "0"))
        return out

    def item_counts(self, cid: str | None = None) -> dict[str, dict[str, int]]:
        """campaign id -> item state -> count (all campaigns, or one)."""
        where = "subject_kind = 'campaign_item'"
        params: dict[str, Any] = {}
        if cid:
            where += " AND subject_id > {lo:String} AND subject_id < {hi:String}"
            params.update(_bounds(cid))
        rows = self.query(
            "SELECT splitByChar('/', subject_id)[1] AS cid, state, count() AS n FROM ("
            "SELECT subject_id, argMax(to_state, subject_version) AS state FROM {db}.decisions FINAL "
            f"WHERE {where} GROUP BY subject_id) GROUP BY cid, state", params)
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            out.setdefault(r["cid"], {"pending": 0, "certified": 0, "revoked": 0})[r["state"]] = int(r["n"])
        return out

    # -- attribute usage ------------------------------------------------------------------------
    def workflows(self) -> list[dict[str, Any]]:
        return self.query("SELECT workflow_id, count() AS events, countIf(notEmpty(inputs_used)) AS with_inputs "
                          "FROM {db}.transitions FINAL GROUP BY workflow_id ORDER BY workflow_id")

    def attribute_usage(self, workflow: str) -> list[dict[str, Any]]:
        """Per (attribute, action): events, first/last seen, AG-BND-001/002 findings on those events."""
        rows = self.query(
            "SELECT i.name AS name, t.action AS action, count() AS n, min(t.occurred_at) AS first_seen, "
            "max(t.occurred_at) AS last_seen, countIf(has(f.codes, 'AG-BND-001')) AS bnd001, "
            "countIf(has(f.codes, 'AG-BND-002')) AS bnd002, groupUniqArray(3)(i.source) AS sources "
            "FROM (SELECT event_id, action, occurred_at, inputs_used FROM {db}.transitions FINAL "
            "      WHERE workflow_id = {wf:String}) AS t "
            "ARRAY JOIN t.inputs_used AS i "
            "LEFT JOIN (SELECT event_id, groupArray(code) AS codes FROM {db}.findings FINAL "
            "           WHERE code IN ('AG-BND-001', 'AG-BND-002') GROUP BY event_id) AS f ON f.event_id = t.event_id "
            "GROUP BY name, action ORDER BY name, action", {"wf": workflow})
        for r in rows:
            r["first_ms"], r["last_ms"] = _ms(r["first_seen"]), _ms(r["last_seen"])
        return rows

    def subjects(self, kind: str, prefix: str) -> list[dict[str, Any]]:
        """Latest state of every subject of ``kind`` whose id starts with ``prefix``."""
        return self.query(
            "SELECT subject_id, argMax(to_state, subject_version) AS state, max(subject_version) AS version, "
            "argMax(actor, subject_version) AS actor, argMax(comment, subject_version) AS comment, "
            "argMax(decided_at, subject_version) AS decided_at, argMax(payload, subject_version) AS payload "
            "FROM {db}.decisions FINAL WHERE subject_kind = {k:String} AND startsWith(subject_id, {p:String}) "
            "GROUP BY subject_id ORDER BY subject_id", {"k": kind, "p": prefix})

    def history_prefix(self, kind: str, prefix: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT subject_id, kind, subject_version, actor, decided_at, from_state, to_state, comment, payload "
            "FROM {db}.decisions FINAL WHERE subject_kind = {k:String} AND startsWith(subject_id, {p:String}) "
            "ORDER BY decided_at, subject_id, subject_version", {"k": kind, "p": prefix})
