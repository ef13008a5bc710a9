"""Review reads from the audit store: the queue, one finding, histories, exceptions, exports, metric counts.

Every read uses bound parameters; filters are added only when asked for (an always-true ``OR`` form hides
the key from the index, see audit.py). The current state of a finding is the ``to_state`` of its decision
with the highest version; no decision means ``new`` at version 0.

Example::

    store = ReviewStore(sink)
    rows, total = store.queue(QueueFilter(agent="agent-jml-03"), now_ms)
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..audit import AUDIT_SETTINGS, trail
from ..sinks.clickhouse import ClickHouseSink
from .model import EXCEPTION_STATUSES, OPEN_STATES, REVIEW_SEVERITIES, utc

LATEST_SQL = """
SELECT subject_id, ifNull(argMax(to_state, subject_version), '') AS state, max(subject_version) AS version,
       argMax(payload['assignee'], subject_version) AS assignee, argMax(decided_at, subject_version) AS updated_at
FROM {db}.decisions FINAL
WHERE subject_kind = 'finding' {latest_where}
GROUP BY subject_id
"""
"""Current state of findings; narrowed to the filtered agent (decisions carry it) so a page does not
aggregate every decision ever made."""

QUEUE_SQL = """
SELECT f.event_id AS event_id, f.code AS code, f.severity AS severity, f.agent_id AS agent_id,
       f.run_id AS run_id, f.occurred_at AS occurred_at,
       if(d.state = '', 'new', d.state) AS status, d.version AS version, d.assignee AS assignee,
       count() OVER () AS total_rows
FROM {db}.findings AS f FINAL
LEFT JOIN (LATEST) AS d ON d.subject_id = concat(f.event_id, '/', f.code)
WHERE {where}
ORDER BY multiIf(f.severity = 'critical', 0, f.severity = 'high', 1, 2), f.occurred_at, f.event_id, f.code
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
"""
"""Narrow columns only: an agent's findings spread over many granules, so the page is chosen on the small
columns and the wide ones (message, arrays) are read for those rows alone (DETAIL_SQL)."""

DETAIL_SQL = """
SELECT event_id, code, category, message, target_id, action, related_event_ids
FROM {db}.findings FINAL
WHERE code IN {codes:Array(String)} AND agent_id IN {agents:Array(String)} AND event_id IN {ids:Array(String)}
"""

COUNT_SQL = """
SELECT count() AS n
FROM {db}.findings AS f FINAL
LEFT JOIN (LATEST) AS d ON d.subject_id = concat(f.event_id, '/', f.code)
WHERE {where}
"""


@dataclass
class QueueFilter:
    """Queue filters; empty means any. ``status`` defaults to the open states."""

    severity: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    agent: str = ""
    workflow: str = ""
    status: list[str] = field(default_factory=lambda: list(OPEN_STATES))
    assignee: str = ""
    max_age_hours: float | None = None
    min_age_hours: float | None = None

    def where(self, now_ms: int) -> tuple[str, dict[str, Any]]:
        sev = [s for s in self.severity if s in REVIEW_SEVERITIES] or list(REVIEW_SEVERITIES)
        where = ["f.severity IN {sev:Array(String)}", "f.exception_id IS NULL"]
        params: dict[str, Any] = {"sev": sev}
        if self.code:
            where.append("f.code IN {codes:Array(String)}")
            params["codes"] = self.code
        if self.agent:  # in any case, as the correlator matches identities; the IN keeps the sort key's index
            where.append("f.agent_id IN (SELECT DISTINCT agent_id FROM {db}.findings "
                         f"WHERE {identity_sql('agent_id')} = {identity_sql('{agent:String}')})")
            params["agent"] = self.agent
        if self.workflow:
            where.append("f.event_id IN (SELECT event_id FROM {db}.transitions WHERE workflow_id = {wf:String})")
            params["wf"] = self.workflow
        if self.status:
            where.append("if(d.state = '', 'new', d.state) IN {status:Array(String)}")
            params["status"] = self.status
        if self.assignee:
            where.append("d.assignee = {assignee:String}")
            params["assignee"] = self.assignee
        now = datetime.fromtimestamp(now_ms / 1000, UTC)
        if self.max_age_hours is not None:
            where.append("f.occurred_at >= {newest:DateTime64(3)} - toIntervalSecond({max_age:UInt32})")
            params["max_age"] = int(self.max_age_hours * 3600)
        if self.min_age_hours is not None:
            where.append("f.occurred_at <= {newest:DateTime64(3)} - toIntervalSecond({min_age:UInt32})")
            params["min_age"] = int(self.min_age_hours * 3600)
        params["newest"] = now.replace(tzinfo=None)
        return " AND ".join(where), params


EPOCH, LAST = datetime(1970, 1, 1), datetime(2299, 12, 31)
DECISION_AGENT = "payload['agent_id']"


def identity_sql(expr: str) -> str:
    """ClickHouse SQL for :func:`pipeline.events.identity_key` of ``expr``, as the pipeline keys identities:
    NFKC, lower-cased, NFKC again, so ``José`` sent composed and decomposed, or in full-width letters, is one
    identity in a review as in the correlator. ClickHouse has no Unicode case folding: ``lowerUTF8`` stands
    in for ``casefold``, and the two differ for a few letters only (``ß`` stays ``ß``; ``ẞ`` lowers to it),
    never for ASCII. ASCII, the usual id, takes ``lowerUTF8`` alone (normalising costs ten times as much)."""
    return (f"if(length({expr}) = lengthUTF8({expr}), lowerUTF8({expr}), "
            f"normalizeUTF8NFKC(lowerUTF8(normalizeUTF8NFKC({expr}))))")

LATEST_EXCEPTION_SQL = ("SELECT * FROM {db}.exceptions FINAL ORDER BY exception_id, version DESC "
                        "LIMIT 1 BY exception_id")
STATUS_SQL = ("if(state = 'active' AND toUnixTimestamp64Milli(expires_at) <= {now:Int64}, 'expired', "
              "toString(state))")
"""An exception's status at ``now`` in SQL, as :func:`.model.exception_status` gives it in Python."""

EXPORT_PAGE = 10_000
EXPORT_SOURCES = (("decisions", "decided_at", "subject_id", "subject_version", "decision"),
                  ("exceptions", "updated_at", "exception_id", "version", "exception"))
"""What an export holds, in the order its rows take within one millisecond (the cursor's ``rank``)."""


@dataclass(frozen=True)
class ExportCursor:
    """Where the next page of an export starts: after the row with this (time, rank, id, version).

    Sent to clients as an opaque token (:meth:`token`); a token that does not parse is refused as bad
    input, never taken as "from the start"."""

    at: datetime
    rank: int
    key: str
    version: int

    def token(self) -> str:
        at = self.at.replace(tzinfo=None).isoformat(timespec="milliseconds")
        raw = json.dumps([at, self.rank, self.key, self.version], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> ExportCursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            at, rank, key, version = json.loads(raw)
            # In the store's range (utc): year 1 was a ClickHouse error (a 500), year 9999 silently no rows.
            cursor = cls(utc(datetime.fromisoformat(at)).replace(tzinfo=None), int(rank), str(key), int(version))
        except (ValueError, TypeError, UnicodeDecodeError, RecursionError, OverflowError) as exc:
            # RecursionError: json.loads of a token that decodes to 1,500 nested '[' (a 500 before)
            raise ValueError(f"not an export cursor: {token[:80]!r}") from exc
        if cursor.rank not in (0, 1) or not -2**31 <= cursor.version < 2**31:
            raise ValueError(f"not an export cursor: {token[:80]!r}")
        return cursor


def _ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


class ReviewStore:
    """Thread-safe reads (one lock around the client: the app serves requests from a thread pool)."""

    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink
        self._lock = threading.Lock()

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return self.sink.query(sql, params or {}, AUDIT_SETTINGS)

    # -- findings -------------------------------------------------------------------------------
    def queue(self, flt: QueueFilter, now_ms: int, *, limit: int = 50, offset: int = 0
              ) -> tuple[list[dict[str, Any]], int]:
        where, params = flt.where(now_ms)
        agent = f"AND {identity_sql(DECISION_AGENT)} = {identity_sql('{agent:String}')}" if flt.agent else ""
        latest = LATEST_SQL.replace("{latest_where}", agent)
        sql = QUEUE_SQL.replace("LATEST", latest).replace("{where}", where)
        rows = self.query(sql, {**params, "limit": limit, "offset": offset})
        if rows:  # one scan: the window count is taken before LIMIT
            total = rows[0]["total_rows"]
        else:
            total = self.query(COUNT_SQL.replace("LATEST", latest).replace("{where}", where), params)[0]["n"]
        for r in rows:
            r.pop("total_rows")
        if rows:
            details = {(d["event_id"], d["code"]): d for d in self.query(DETAIL_SQL, {
                "codes": sorted({r["code"] for r in rows}), "agents": sorted({r["agent_id"] for r in rows}),
                "ids": [r["event_id"] for r in rows]})}
            for r in rows:
                r.update(details.get((r["event_id"], r["code"]), {}))
        for r in rows:
            r["occurred_at_ms"] = _ms(r["occurred_at"])
        return rows, int(total)

    def finding(self, event_id: str, code: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT event_id, code, severity, category, message, evidence_fields, refs, related_event_ids, run_id, "
            "agent_id, target_id, action, occurred_at, scored_at, governance_policy_version, exception_id, "
            "exception_version FROM {db}.findings FINAL WHERE event_id = {e:String} AND code = {c:String} "
            "ORDER BY finding_idx LIMIT 1", {"e": event_id, "c": code})
        if not rows:
            return None
        row = rows[0]
        row["occurred_at_ms"] = _ms(row["occurred_at"])
        return row

    def parties(self, finding: dict[str, Any]) -> set[str]:
        """Who a finding is about: the targets, the principals the agents acted for, and the human approvers of
        its event and of every related event (a chain's other steps), for separation of duties
        (``check_not_own``)."""
        ids = [finding["event_id"], *(finding.get("related_event_ids") or [])]
        rows = self.query("SELECT DISTINCT target_id, on_behalf_of, approved_by FROM {db}.transitions "
                          "WHERE event_id IN {ids:Array(String)}", {"ids": ids})
        out = {finding["target_id"]} if finding.get("target_id") else set()
        for r in rows:
            out.update(v for v in (r["target_id"], r["on_behalf_of"], r["approved_by"]) if v)
        return out

    def state(self, subject_kind: str, subject_id: str) -> tuple[str, int, str]:
        """(state, version, assignee) of a subject from its decisions; ('new', 0, '') without any."""
        rows = self.query(
            "SELECT ifNull(argMax(to_state, subject_version), '') AS state, max(subject_version) AS version, "
            "argMax(payload['assignee'], subject_version) AS assignee FROM {db}.decisions FINAL "
            "WHERE subject_kind = {k:String} AND subject_id = {s:String} HAVING count() > 0",
            {"k": subject_kind, "s": subject_id})
        if not rows:
            return "new", 0, ""
        return str(rows[0]["state"]), int(rows[0]["version"]), str(rows[0]["assignee"])

    def history(self, subject_kind: str, subject_id: str) -> list[dict[str, Any]]:
        return self.query(
            "SELECT decision_id, kind, subject_version, actor, actor_roles, decided_at, from_state, to_state, "
            "classification, reason, comment, payload FROM {db}.decisions FINAL "
            "WHERE subject_kind = {k:String} AND subject_id = {s:String} ORDER BY subject_version, decided_at",
            {"k": subject_kind, "s": subject_id})

    def has_decision(self, subject_id: str, version: int) -> bool:
        return bool(self.query(
            "SELECT 1 FROM {db}.decisions WHERE subject_id = {s:String} AND subject_version = {v:Int32} LIMIT 1",
            {"s": subject_id, "v": version}))

    def trails(self, finding: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
        """The finding's run trail, and for a chain the trail of every other run its events belong to."""
        runs = [finding["run_id"]]
        related = [e for e in finding["related_event_ids"] if e != finding["event_id"]]
        if related:
            for r in self.query("SELECT DISTINCT run_id FROM {db}.transitions WHERE event_id IN {ids:Array(String)} "
                                "ORDER BY run_id", {"ids": related}):
                if r["run_id"] not in runs:
                    runs.append(r["run_id"])
        with self._lock:
            return [(run, trail(self.sink, run)) for run in runs]

    def run_decisions(self, run_id: str) -> list[dict[str, Any]]:
        """Decisions about the findings of one run (for ``agentgov trail``)."""
        return self.query(
            "SELECT payload['event_id'] AS event_id, subject_id, kind, subject_version, actor, decided_at, "
            "from_state, to_state, classification, "
            "reason, comment FROM {db}.decisions FINAL WHERE payload['run_id'] = {r:String} "
            "ORDER BY decided_at, subject_id, subject_version", {"r": run_id})

    # -- exceptions -----------------------------------------------------------------------------
    def exceptions(self, now_ms: int, *, status: str = "", limit: int = 100, offset: int = 0
                   ) -> tuple[list[dict[str, Any]], int]:
        """One page of the latest version of every exception, newest request first, and how many there are.

        ``status`` (requested, active, expired, rejected, revoked; empty for all) is computed as
        :func:`exception_status` does: an active exception past its end is expired, whatever its record says.
        A page is bounded: exceptions accumulate for ever, and one request must not read them all."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "now": now_ms}
        where = ""
        if status:
            where = "WHERE " + STATUS_SQL + " = {status:String}"
            params["status"] = status
        rows = self.query(
            "SELECT *, count() OVER () AS total_rows FROM (" + LATEST_EXCEPTION_SQL + ") " + where +
            " ORDER BY requested_at DESC, exception_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}", params)
        total = int(rows[0]["total_rows"]) if rows else (
            0 if offset == 0 else int(self.query(
                "SELECT count() AS n FROM (" + LATEST_EXCEPTION_SQL + ") " + where, params)[0]["n"]))
        for r in rows:
            r.pop("total_rows")
        return [self._exc(r) for r in rows], total

    def exception(self, exception_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM {db}.exceptions FINAL WHERE exception_id = {x:String} "
                          "ORDER BY version DESC LIMIT 1", {"x": exception_id})
        return self._exc(rows[0]) if rows else None

    def has_exception_version(self, exception_id: str, version: int) -> bool:
        return bool(self.query(
            "SELECT 1 FROM {db}.exceptions WHERE exception_id = {x:String} AND version = {v:Int32} LIMIT 1",
            {"x": exception_id, "v": version}))

    def exception_versions(self, exception_id: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM {db}.exceptions FINAL WHERE exception_id = {x:String} ORDER BY version",
                          {"x": exception_id})
        return [self._exc(r) for r in rows]

    def excepted_findings(self, exception_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return self.query(
            "SELECT event_id, code, severity, run_id, agent_id, occurred_at, exception_version FROM {db}.findings "
            "FINAL WHERE exception_id = {x:String} ORDER BY occurred_at DESC LIMIT {n:UInt32}",
            {"x": exception_id, "n": limit})

    @staticmethod
    def _exc(row: dict[str, Any]) -> dict[str, Any]:
        out = dict(row)
        for key in ("requested_at", "effective_at", "expires_at", "ended_at", "updated_at"):
            out[key] = _ms(row.get(key))
        return out

    # -- export ---------------------------------------------------------------------------------
    def export(self, since: datetime, *, after: ExportCursor | None = None, limit: int = EXPORT_PAGE
               ) -> tuple[list[dict[str, Any]], ExportCursor | None]:
        """One page of the decisions and exception versions since ``since``, oldest first, each tagged with
        its type; and the cursor of the next page (None at the end).

        Rows are ordered by (time, type, id, version), decisions before exception versions of the same
        millisecond, and a page starts strictly after ``after``: keyset paging, so a page costs the same
        wherever it is, and a record stored while an export pages on is neither skipped nor repeated unless
        it is older than the cursor. Each table gives at most ``limit + 1`` rows past the cursor; the page is
        the first ``limit`` of their merge, with a cursor only when a row follows (no empty last page)."""
        since = min(max(since.replace(tzinfo=None), EPOCH), LAST)  # DateTime64 holds 1900..2299
        params: dict[str, Any] = {"t": since, "n": limit + 1}  # one more than the page: is there a next?
        if after is not None:
            params.update(ct=after.at.replace(tzinfo=None), cr=after.rank, ck=after.key, cv=after.version)
        pages = []
        for rank, (table, at, key, version, kind) in enumerate(EXPORT_SOURCES):
            where = f"{at} >= {{t:DateTime64(3)}}"
            if after is not None:
                where += (f" AND ({at}, {rank}, {key}, {version}) > "
                          "({ct:DateTime64(3)}, {cr:UInt8}, {ck:String}, {cv:Int32})")
            rows = self.query(f"SELECT * FROM {{db}}.{table} FINAL WHERE {where} "
                              f"ORDER BY {at}, {key}, {version} LIMIT {{n:UInt32}}", params)
            pages.append([(r[at], rank, r[key], r[version], {"type": kind, **r}) for r in rows])
        merged = sorted(pages[0] + pages[1], key=lambda row: row[:4])
        out = [row[4] for row in merged[:limit]]
        if len(merged) <= limit:
            return out, None
        at, rank, key, version, _ = merged[limit - 1]
        return out, ExportCursor(at, rank, key, version)

    # -- metrics --------------------------------------------------------------------------------
    def open_by_severity(self, sla_hours: dict[str, float], now_ms: int) -> tuple[dict[str, int], dict[str, int]]:
        """Open findings (not excepted) and those past their SLA, by severity."""
        rows = self.query(
            "SELECT f.severity AS severity, count() AS open, "
            "countIf(toUnixTimestamp64Milli(f.occurred_at) + multiIf(f.severity = 'critical', {c:UInt64}, "
            "f.severity = 'high', {h:UInt64}, {m:UInt64}) < {now:UInt64}) "
            "AS breached FROM {db}.findings AS f FINAL LEFT JOIN (LATEST) AS d "
            "ON d.subject_id = concat(f.event_id, '/', f.code) WHERE f.severity IN {sev:Array(String)} "
            "AND f.exception_id IS NULL AND d.state != 'closed' GROUP BY severity"
            .replace("LATEST", LATEST_SQL.replace("{latest_where}", "")),
            {**{s[0]: int(sla_hours[s] * 3_600_000) if s in sla_hours else 2**62 for s in REVIEW_SEVERITIES},
             "now": now_ms,
             "sev": list(REVIEW_SEVERITIES)})
        open_ = {s: 0 for s in REVIEW_SEVERITIES}
        breached = dict(open_)
        for r in rows:
            open_[r["severity"]] = int(r["open"])
            breached[r["severity"]] = int(r["breached"]) if r["severity"] in sla_hours else 0
        return open_, breached

    def exception_counts(self, now_ms: int) -> tuple[dict[str, int], int]:
        """Exceptions by status, and the active ones ending within 7 days: one aggregate, not a read of all."""
        counts = dict.fromkeys(EXCEPTION_STATUSES, 0)
        rows = self.query(
            "SELECT " + STATUS_SQL + " AS status, count() AS n, countIf(state = 'active' AND "
            "toUnixTimestamp64Milli(expires_at) > {now:Int64} AND toUnixTimestamp64Milli(expires_at) <= "
            "{now:Int64} + 604800000) AS expiring FROM (" + LATEST_EXCEPTION_SQL + ") GROUP BY status",
            {"now": now_ms})
        expiring = 0
        for r in rows:
            if r["status"] in counts:
                counts[r["status"]] = int(r["n"])
            expiring += int(r["expiring"])
        return counts, expiring


def attach_decisions(steps: list[dict[str, Any]], decisions: list[dict[str, Any]]) -> None:
    """Put each review decision under the trail step of the event its finding is on."""
    by_event: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        by_event.setdefault(d.pop("event_id"), []).append(d)
    for step in steps:
        step["decisions"] = by_event.get(step["event_id"], [])


def sla(severity: str, occurred_at_ms: int, sla_hours: dict[str, float], now_ms: int) -> dict[str, Any]:
    """The SLA clock of one open finding: hours allowed, hours left (negative when breached)."""
    hours = sla_hours.get(severity)
    if hours is None:
        return {"hours": None, "left_hours": None, "breached": False}
    left = (occurred_at_ms + hours * 3_600_000 - now_ms) / 3_600_000
    return {"hours": hours, "left_hours": round(left, 1), "breached": left < 0}
